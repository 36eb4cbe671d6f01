"""Bar charts as SVG drawn on the server: no script, no inline style (presentation
attributes only, which the console's CSP allows)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    y: int
    width: int


@dataclass(frozen=True)
class Chart:
    title: str
    bars: list[Bar]
    height: int
    label_width: int = 110
    bar_area: int = 360
    row: int = 28


def bars(items: list[tuple[str, int]], title: str) -> Chart:
    """A horizontal bar chart of `items` (label, value), bars scaled to the largest."""
    top = max((v for _, v in items), default=0) or 1
    chart_bars = [
        Bar(label, value, y=i * 28, width=round(360 * value / top))
        for i, (label, value) in enumerate(items)
    ]
    return Chart(title, chart_bars, height=max(len(items), 1) * 28)

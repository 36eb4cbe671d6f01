"""Regenerate the generated parts of the docs (the ownership table, the settings table) from
the code."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from app import admin, auth, orders, webhooks  # noqa: F401 - modules declare their tables on import
from app.kernel.ownership import registry
from app.settings.docs import as_markdown as settings_table

DOCS = Path(__file__).resolve().parents[1] / "docs"


def render(doc: Path, name: str, table: Callable[[], str]) -> None:
    block = re.compile(rf"(<!-- generated: {name} -->\n).*?(<!-- end generated -->)", re.DOTALL)
    text = doc.read_text()
    updated = block.sub(lambda m: m.group(1) + table() + m.group(2), text)
    doc.write_text(updated)
    print(f"{doc.relative_to(DOCS.parent)}: {'updated' if updated != text else 'up to date'}")


def main() -> None:
    render(DOCS / "ownership.md", "ownership table", registry.as_markdown)
    render(DOCS / "configuration.md", "settings table", settings_table)


if __name__ == "__main__":
    main()

"""The table of settings in docs/configuration.md, generated from the models (`make docs`)."""

from __future__ import annotations

from app.settings import setting_fields
from app.settings.values import env_name


def _default(field: object) -> str:
    shown = field.json_schema_extra["shown"]  # type: ignore[attr-defined]
    if shown is not None:
        return str(shown)
    default = field.default  # type: ignore[attr-defined]
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, str):
        return f"`{default}`"
    return str(default)


def as_markdown() -> str:
    """One row per variable, grouped as `Settings` groups them."""
    lines = ["| variable | default | group | meaning |", "|---|---|---|---|"]
    for group, field in setting_fields():
        meaning = (field.description or "").replace("|", "\\|")
        where = f"`{group}`" if group else "—"
        lines.append(f"| `{env_name(field)}` | {_default(field)} | {where} | {meaning} |")
    return "\n".join(lines) + "\n"

"""Regenerate the generated parts of the docs (the ownership table) from the code."""

from __future__ import annotations

import re
from pathlib import Path

from app import admin, auth, orders, webhooks  # noqa: F401 - modules declare their tables on import
from app.kernel.ownership import registry

DOC = Path(__file__).resolve().parents[1] / "docs" / "ownership.md"
BLOCK = re.compile(r"(<!-- generated: ownership table -->\n).*?(<!-- end generated -->)", re.DOTALL)


def main() -> None:
    text = DOC.read_text()
    updated = BLOCK.sub(lambda m: m.group(1) + registry.as_markdown() + m.group(2), text)
    DOC.write_text(updated)
    print(f"{DOC.relative_to(DOC.parents[1])}: {'updated' if updated != text else 'up to date'}")


if __name__ == "__main__":
    main()

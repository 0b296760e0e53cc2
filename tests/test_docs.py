"""docs/architecture.md stays true: every module of the package is in its module map."""

from __future__ import annotations

from pathlib import Path

import trtforge

PACKAGE = Path(trtforge.__file__).parent
ARCHITECTURE = PACKAGE.parents[1] / "docs" / "architecture.md"


def test_every_module_is_in_the_architecture_module_map() -> None:
    text = ARCHITECTURE.read_text()
    missing = []
    for module in sorted(PACKAGE.rglob("*.py")):
        relative = module.relative_to(PACKAGE)
        if relative.name in {"__init__.py", "__main__.py", "_app.py"}:
            continue
        if relative.parts[0] == "cli" or relative.parts[:2] == ("triton", "models"):
            continue  # documented as a folder
        name = relative.with_suffix("").as_posix()
        if f"`{name}`" not in text:
            missing.append(name)
    assert missing == [], f"add these modules to docs/architecture.md: {missing}"

"""Commands registered on the shared app (see cli/__init__.py)."""

from __future__ import annotations

from trtforge.cli._app import app  # noqa: F401

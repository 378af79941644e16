"""Small helpers for the Markdown this library writes (reports, notes, tables)."""

from __future__ import annotations

__all__ = ["code_cell"]


def code_cell(text: str) -> str:
    """``text`` as inline code that is safe inside a Markdown table cell: architecture strings
    are full of ``|``, which would otherwise split the cell (GitHub, optuna-dashboard notes)."""
    return "`" + text.replace("|", "\\|") + "`"

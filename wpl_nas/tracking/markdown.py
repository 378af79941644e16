"""Small helpers for the Markdown this library writes (reports, notes, tables), and its plain-text
rendering for the terminal."""

from __future__ import annotations

import re

__all__ = ["code_cell", "plain_text"]

#: A backslash escape of Markdown punctuation (``\|``, ``\_``, ``\*``, ...).
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~])")
#: A cell separator: a ``|`` not escaped by a backslash.
_SEPARATOR = re.compile(r"(?<!\\)\|")
#: Inline code: ``\`x\```.
_CODE = re.compile(r"`([^`]*)`")
#: The row under a table's header: ``|---|---:|``.
_RULE = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$")


def code_cell(text: str) -> str:
    """``text`` as inline code that is safe inside a Markdown table cell: architecture strings
    are full of ``|``, which would otherwise split the cell (GitHub, optuna-dashboard notes)."""
    return "`" + text.replace("|", "\\|") + "`"


def plain_text(markdown: str) -> str:
    """``markdown`` as a terminal shows it best: tables as aligned columns (numbers right-aligned
    where the table says ``---:``), no backslash escapes, no backticks around code. Other lines
    keep their words."""
    lines = markdown.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if _is_table_start(lines, i):
            end = i + 2
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            out += _table(lines[i], lines[i + 1], lines[i + 2:end])
            i = end
        else:
            out.append(_ESCAPE.sub(r"\1", _CODE.sub(r"\1", lines[i])))
            i += 1
    return "\n".join(out)


def _is_table_start(lines: list[str], i: int) -> bool:
    return lines[i].startswith("|") and i + 1 < len(lines) and _RULE.match(lines[i + 1].strip()) is not None


def _cells(row: str) -> list[str]:
    """The cells of a table row, unescaped, with a code cell's backticks removed."""
    cells = [c.strip() for c in _SEPARATOR.split(row.strip())[1:-1]]
    return [_ESCAPE.sub(r"\1", c[1:-1] if len(c) >= 2 and c[0] == c[-1] == "`" else c) for c in cells]


def _table(header: str, rule: str, rows: list[str]) -> list[str]:
    table = [_cells(header), *(_cells(r) for r in rows)]
    right = [c.strip().endswith(":") for c in rule.strip().strip("|").split("|")]
    columns = max(len(r) for r in table)
    table = [r + [""] * (columns - len(r)) for r in table]
    right += [False] * (columns - len(right))
    widths = [max(len(r[j]) for r in table) for j in range(columns)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    return [line(table[0]), "  ".join("-" * w for w in widths), *(line(r) for r in table[1:])]

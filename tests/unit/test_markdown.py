"""Markdown for files, plain text for the terminal (wpl_nas.tracking.markdown)."""

from __future__ import annotations

from wpl_nas.tracking.markdown import code_cell, plain_text

ARCH = "|conv_5~0|+|skip_connect~0|none~1|"


def test_a_table_becomes_aligned_columns_without_escapes_or_backticks():
    markdown = "\n".join([
        "| trial | architecture | score_at_training |",
        "|---:|---|---:|",
        f"| 3 | {code_cell(ARCH)} | 0.5000 |",
        f"| 12 | {code_cell('|none~0|')} | 0.75 |",
        "",
        "Noise ceiling: the mean τ of two seeds; `all` resets every stage, a\\_b.",
    ])
    text = plain_text(markdown)
    lines = text.splitlines()
    assert lines[0].split() == ["trial", "architecture", "score_at_training"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["3", ARCH, "0.5000"] and lines[3].split() == ["12", "|none~0|", "0.75"]
    assert lines[2].index("3") == lines[3].index("2")  # numbers right-aligned, as `---:` asks
    assert lines[2].index(ARCH) == lines[3].index("|none~0|")  # text left-aligned
    assert "\\" not in text and "`" not in text
    assert lines[-1] == "Noise ceiling: the mean τ of two seeds; all resets every stage, a_b."


def test_text_without_tables_only_loses_its_escapes():
    assert plain_text("a \\| b\nno table | here") == "a | b\nno table | here"

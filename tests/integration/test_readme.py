"""The README's promises: its Python API snippet runs, and its CLI examples parse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_api_snippet_runs(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)  # the snippet writes runs/ and data/ where it runs
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    result = namespace["result"]
    assert len(result.study.trials) == 3  # type: ignore[attr-defined]
    assert (tmp_path / "runs" / "api-demo" / "study.db").is_file()
    assert tuple(namespace["logits"].shape) == (8, 10)  # type: ignore[attr-defined]


def test_readme_names_the_two_commands_that_ci_runs():
    text = README.read_text()
    assert "```bash\nwpl-nas search\n```" in text
    assert "```bash\npytest\n```" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "\npytest\n" in ci and 'pip install --quiet -e ".[dev]"' in ci

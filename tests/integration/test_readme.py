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
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)  # the snippet writes runs/ and data/ where it runs
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    result = namespace["result"]
    assert len(result.study.trials) == 3  # type: ignore[attr-defined]
    assert (tmp_path / "runs" / "api-demo" / "study.db").is_file()
    assert tuple(namespace["logits"].shape) == (8, 10)  # type: ignore[attr-defined]
    assert namespace["trained"].pool.members()  # type: ignore[attr-defined]


def test_readme_names_the_two_commands_that_ci_runs():
    text = README.read_text()
    assert "```bash\nwpl-nas search\n```" in text
    assert "```bash\npytest\n```" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "\npytest\n" in ci and 'pip install --quiet -e ".[dev]"' in ci


@pytest.mark.slow
def test_optuna_plugin_snippet_runs_and_a_second_run_continues(tmp_path, monkeypatch):
    import optuna

    snippet = python_blocks()[1]
    assert "n_trials=50" in snippet
    snippet = snippet.replace("n_trials=50", "n_trials=2")  # the same lines, a test-sized budget
    monkeypatch.chdir(tmp_path)
    for run in (1, 2):  # the second run is a new process reopening the study: it continues
        namespace: dict[str, object] = {}
        exec(compile(snippet, str(README), "exec"), namespace)
        study = namespace["study"]
        assert isinstance(study, optuna.Study)
        trials = study.get_trials()
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2 * run
    assert study.user_attrs["pool_after_trial"] == 3
    assert (tmp_path / "runs" / "mine" / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
def test_extending_snippets_run(tmp_path, monkeypatch):
    """The "Extending wpl-nas" section: its dataset registers and is searched, its space file loads."""
    import wpl_nas

    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    try:
        exec(compile(python_blocks()[2], str(README), "exec"), namespace)
        result = namespace["result"]
        assert len(result.study.trials) == 3 and result.best_score > 0.25  # type: ignore[attr-defined]  # 4 classes
        assert wpl_nas.load_dataset("blobs").num_classes == 4
    finally:
        if "blobs" in wpl_nas.DATASETS:
            wpl_nas.DATASETS.unregister("blobs")
    (space_yaml,) = re.findall(r"```yaml\n(kind: mlp\n.*?)```", README.read_text(), flags=re.S)
    (tmp_path / "my_mlp.yaml").write_text(space_yaml)
    space = wpl_nas.load_space(str(tmp_path / "my_mlp.yaml"))
    assert space.name == "my_mlp" and space.size == 16  # (2 widths x 2 activations) ** 2 layers

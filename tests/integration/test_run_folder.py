"""The run folder as read-only commands open it: the final supernet, cheaply, without writing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import search_tiny

import wpl_nas
from wpl_nas.run_folder import CHECKPOINT, CONFIG_FILE, RunFolder


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("strategy", ["wpl", "hat"])  # HAT's gates shape the forward pass: its state must load
def test_load_supernet_scores_as_the_search_did_and_writes_nothing(tiny_space_file, data_dir, tmp_path, strategy):
    result = search_tiny(tiny_space_file, data_dir, tmp_path, strategy=strategy, study_name=f"ro-{strategy}")
    before = _digest(result.run_dir)
    trained = RunFolder(result.run_dir).load_supernet()
    assert _digest(result.run_dir) == before
    assert trained.pool.entries.keys() == {0, 1} and trained.config.strategy == strategy
    one_sample = 1 / len(trained.eval_y)  # another thread count may flip a tie, no more
    for number, entry in trained.pool.entries.items():  # the last re-score was taken on these weights
        assert trained.score(wpl_nas.Architecture.parse(entry.arch)) == pytest.approx(entry.rescores[1],
                                                                                      abs=one_sample), number


def test_load_supernet_refuses_a_folder_without_a_checkpoint(tiny_space_file, data_dir, tmp_path):
    result = search_tiny(tiny_space_file, data_dir, tmp_path, study_name="none")
    (result.run_dir / CHECKPOINT).unlink()
    with pytest.raises(wpl_nas.ConfigError, match="no checkpoint"):
        RunFolder(result.run_dir).load_supernet()


def test_every_read_of_config_yaml_names_the_file_when_it_is_damaged(tmp_path):
    folder = RunFolder(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("- a list\n- not a mapping\n")
    for read in (folder.config, folder.study_name, folder.history):
        with pytest.raises(wpl_nas.ConfigError, match="must be a mapping"):
            read()

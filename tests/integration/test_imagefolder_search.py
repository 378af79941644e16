"""Whole searches on image files streamed from disk (``--dataset imagefolder``), and ``--augment``."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from wpl_nas.cli import cli


def _search(images: Path, space: Path, runs: Path, *extra: str) -> list[float]:
    args = ["search", "--no-progress", "--dataset", "imagefolder", "--data-dir", str(images), "--space", str(space),
            "--image-size", "12", "--runs-dir", str(runs), "--study-name", "images", "--epochs", "1",
            "--batch-size", "4", "--device", "cpu", "--augment", "--eval-samples", "4", *extra]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="images", storage=f"sqlite:///{runs / 'images' / 'study.db'}")
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    return [float(t.value) for t in study.trials]  # type: ignore[arg-type]


@pytest.mark.slow
def test_an_imagefolder_search_runs_and_neither_workers_nor_a_resume_change_its_results(image_dir, tiny_2d_space_file,
                                                                                         tmp_path):
    images, space = image_dir, tiny_2d_space_file
    whole = _search(images, space, tmp_path / "a", "--trials", "2", "--workers", "0")
    assert len(whole) == 2
    # Two worker processes decoding, and the search stopped after one trial and resumed: the same
    # batches in the same order, so the same scores.
    _search(images, space, tmp_path / "b", "--trials", "1", "--workers", "2")
    resumed = _search(images, space, tmp_path / "b", "--trials", "2", "--workers", "2")
    assert resumed == whole
    config = (tmp_path / "b" / "images" / "config.yaml").read_text()
    assert "augment: true" in config and "image_size: 12" in config
    # Augmentation shapes what the supernet learned: it may not change on resume.
    result = CliRunner().invoke(cli, ["search", "--no-progress", "--dataset", "imagefolder", "--data-dir", str(images),
                                      "--space", str(space), "--image-size", "12", "--runs-dir", str(tmp_path / "b"),
                                      "--study-name", "images", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
                                      "--no-augment", "--eval-samples", "4", "--trials", "3"])
    assert result.exit_code == 2 and "augment: saved True, now False" in result.output


@pytest.mark.slow
def test_augment_on_one_dimensional_data_is_refused_before_the_run_folder_is_made(tiny_space_file, data_dir,
                                                                                   tmp_path):
    result = CliRunner().invoke(cli, ["search", "--no-progress", "--space", str(tiny_space_file), "--data-dir",
                                      str(data_dir), "--runs-dir", str(tmp_path / "runs"), "--augment"])
    assert result.exit_code == 2
    assert "augment (random crops and flips) needs images" in result.output and "--no-augment" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


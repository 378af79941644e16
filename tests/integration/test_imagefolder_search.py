"""Whole searches on image files streamed from disk (``--dataset imagefolder``), and ``--augment``."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import counting_decodes

from wpl_nas.cli import cli
from wpl_nas.data import load_dataset
from wpl_nas.run_folder import DATA_JSON, RunFolder


def _args(images: Path, space: Path, runs: Path, *extra: str) -> list[str]:
    return ["search", "--no-progress", "--dataset", "imagefolder", "--data-dir", str(images), "--space", str(space),
            "--image-size", "12", "--runs-dir", str(runs), "--study-name", "images", "--epochs", "1",
            "--batch-size", "4", "--device", "cpu", "--augment", "--eval-samples", "4", *extra]


def _search(images: Path, space: Path, runs: Path, *extra: str) -> list[float]:
    result = CliRunner().invoke(cli, _args(images, space, runs, *extra), catch_exceptions=False)
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
    # The statistics the first load measured are the run's, recorded once.
    assert json.loads((tmp_path / "b" / "images" / DATA_JSON).read_text()) == \
        json.loads((tmp_path / "a" / "images" / DATA_JSON).read_text())
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


@pytest.mark.slow
def test_a_run_keeps_normalising_with_the_statistics_it_recorded_when_the_files_change(
        tmp_path, write_images, tiny_2d_space_file):
    images, run_dir = write_images(tmp_path / "images"), tmp_path / "runs" / "images"
    _search(images, tiny_2d_space_file, tmp_path / "runs", "--trials", "1", "--workers", "0")
    measured = load_dataset("imagefolder", data_dir=images, image_size=12).statistics
    recorded = json.loads((run_dir / DATA_JSON).read_text())
    assert measured is not None and (tuple(recorded["mean"]), tuple(recorded["std"])) == measured
    write_images(tmp_path / "images", seed=1)  # the same files, other pixels: other statistics
    assert load_dataset("imagefolder", data_dir=images, image_size=12).statistics != measured

    # A command that reopens the run (export, anatomy, rank, select) decodes only the evaluation
    # images, not the 24 of the statistics' sample, and normalises as the search did.
    with counting_decodes() as decoded:
        reopened = RunFolder(run_dir).load_supernet(device="cpu")
    assert reopened.data.statistics == measured and 0 < decoded[0] <= 4  # --eval-samples 4
    # So does a resumed search, and it keeps the record as it was.
    _search(images, tiny_2d_space_file, tmp_path / "runs", "--trials", "2", "--workers", "0")
    assert json.loads((run_dir / DATA_JSON).read_text()) == recorded

    # The record is read back as untrusted input: a damaged one is refused by name (exit 2).
    (run_dir / DATA_JSON).write_text(json.dumps({"mean": [0.5, float("nan"), 0.5], "std": [0.2, 0.2, 0.2]}))
    result = CliRunner().invoke(cli, _args(images, tiny_2d_space_file, tmp_path / "runs", "--trials", "3"))
    assert result.exit_code == 2 and DATA_JSON in result.output and "finite" in result.output, result.output
    assert "Traceback" not in result.output

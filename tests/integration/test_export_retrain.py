"""From a search to a model: `wpl-nas export` and `wpl-nas retrain`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import wpl_nas
from wpl_nas.cli import cli
from wpl_nas.objective import SupernetObjective
from wpl_nas.retrain import augment_crop_flip, retrain_run


@pytest.fixture(scope="module")
def run_dir(tiny_space_file, data_dir, tmp_path_factory):
    config = wpl_nas.SearchConfig(space=str(tiny_space_file), data_dir=str(data_dir),
                                  runs_dir=str(tmp_path_factory.mktemp("runs")), study_name="x", trials=3, epochs=1,
                                  batch_size=256, device="cpu", eval_samples=200)
    return wpl_nas.run_search(config, progress=False, command=["test"]).run_dir


@pytest.mark.slow
def test_export_round_trips_without_the_supernet(run_dir):
    result = CliRunner().invoke(cli, ["export", str(run_dir), "--trial", "1"])
    assert result.exit_code == 0, result.output
    folder = run_dir / "export" / "trial_0001"
    meta = json.loads((folder / "arch.json").read_text())
    run = wpl_nas.load_run(run_dir)
    chosen = run.study.trials[1]
    assert meta["arch"] == chosen.user_attrs["arch"] and meta["score_at_training"] == chosen.value

    # A fresh interpreter that only imports torch loads the model and computes what the supernet computes.
    objective = SupernetObjective(run.config, run_dir=run_dir)
    x = objective.trainer.eval_x[:32]
    torch.save(x, folder / "x.pt")
    code = ("import sys, torch; m = torch.export.load(sys.argv[1]).module(); "
            "torch.save(m(torch.load(sys.argv[2])), sys.argv[3]); print('wpl_nas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(folder / "model.pt2"), str(folder / "x.pt"),
                          str(folder / "y.pt")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    arch = objective.space.parse(meta["arch"])
    with torch.no_grad(), objective.supernet.use(arch):
        objective.supernet.eval()
        expected = objective.supernet(x)
    torch.testing.assert_close(torch.load(folder / "y.pt"), expected)
    assert meta["score_exported"] == objective.score(arch)

    # The weights also load into the module itself.
    net = wpl_nas.Supernet(objective.space, in_channels=1, num_classes=10, fixed=arch)
    net.load_state_dict(torch.load(folder / "weights.pt"))


@pytest.mark.slow
def test_retrain_resumes_to_the_same_result_and_touches_test_only_at_the_end(run_dir):
    whole = retrain_run(run_dir, trial=0, epochs=2, progress=False)
    assert len(whole.val_scores) == 2 and 0.0 <= whole.test_score <= 1.0
    saved = json.loads((whole.folder / "result.json").read_text())
    assert saved["test_accuracy"] == whole.test_score and saved["recipe"]["lr"] == 0.05
    weights = torch.load(whole.folder / "checkpoint.pt", weights_only=True)["model"]

    # Interrupted after its first epoch, then resumed: the same run as an uninterrupted one.
    shutil.rmtree(whole.folder)

    def stop(epoch: int, measures: dict[str, float]) -> None:
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retrain_run(run_dir, trial=0, epochs=2, progress=False, on_epoch=stop)
    assert not (whole.folder / "result.json").exists()
    resumed = retrain_run(run_dir, trial=0, epochs=2, progress=False)
    assert resumed.val_scores == whole.val_scores and resumed.test_score == whole.test_score
    again = torch.load(resumed.folder / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(weights[k], again[k]) for k in weights)

    result = CliRunner().invoke(cli, ["retrain", str(run_dir), "--trial", "0", "--epochs", "3", "--no-progress"])
    assert result.exit_code == 2 and "is a retraining of 2 epochs, not 3" in result.output


def test_augmentation_crops_and_flips_images():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = augment_crop_flip(x, gen, pad=2)
    assert out.shape == x.shape
    for i in range(2):  # each output is a shifted (and perhaps mirrored) window of the padded image
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        windows = [padded[:, r: r + 8, c: c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)


@pytest.mark.slow
@pytest.mark.parametrize(("command", "args", "message"), [
    ("export", ["--trial", "99"], "trial 99 of run"),
    ("export", ["--trial", "0", "--best"], "not both"),
    ("retrain", ["--trial", "99"], "trial 99 of run"),
])
def test_bad_trials_are_refused(run_dir, command, args, message):
    result = CliRunner().invoke(cli, [command, str(run_dir), *args])
    assert result.exit_code == 2 and message in result.output, result.output

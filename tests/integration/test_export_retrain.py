"""From a search to a model: `wpl-nas export` (batch norm recalibrated for any batch size) and `wpl-nas retrain`."""

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
from wpl_nas.export import CALIBRATION_SAMPLES, export_run, recalibrate_batch_norm, with_running_stats
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
    objective = SupernetObjective(run.config, run_dir=run_dir)
    arch = objective.space.parse(meta["arch"])
    # Batch norm has running statistics, recalibrated on the default number of training samples
    # (the whole split here: it is smaller).
    samples = min(CALIBRATION_SAMPLES, len(objective.data.train))
    assert meta["batch_norm"]["recalibrated"] and meta["batch_norm"]["calibration_samples"] == samples
    assert f"recalibrated on {samples} training samples" in result.output
    assert meta["score_supernet"] == objective.score(arch)

    # The weights load into the module itself, once its batch norm keeps running statistics.
    net = with_running_stats(wpl_nas.Supernet(objective.space, in_channels=1, num_classes=10, fixed=arch))
    net.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
    net.eval()
    assert all(m.track_running_stats for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d))

    # A fresh interpreter that only imports torch loads the model and computes what that module computes.
    x = objective.trainer.eval_x[:32]
    torch.save(x, folder / "x.pt")
    code = ("import sys, torch; m = torch.export.load(sys.argv[1]).module(); "
            "torch.save(m(torch.load(sys.argv[2])), sys.argv[3]); print('wpl_nas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(folder / "model.pt2"), str(folder / "x.pt"),
                          str(folder / "y.pt")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    with torch.no_grad():
        expected = net(x)
    torch.testing.assert_close(torch.load(folder / "y.pt"), expected)
    assert meta["score_exported"] == objective.trainer.metric.compute(
        net, arch, objective.trainer.eval_x, objective.trainer.eval_y, batch_size=objective.trainer.eval_batch_size)


@pytest.mark.slow
def test_exported_model_answers_one_sample_as_it_answers_the_batch(run_dir):
    result = export_run(run_dir, calibration_samples=512)  # the best trial
    meta = json.loads((result.folder / "arch.json").read_text())
    assert meta["batch_norm"]["calibration_samples"] == 512 == result.batch_norm["calibration_samples"]
    model = torch.export.load(str(result.folder / "model.pt2")).module()
    objective = SupernetObjective(wpl_nas.load_run(run_dir).config, run_dir=run_dir)
    x, y = objective.trainer.eval_x, objective.trainer.eval_y  # (200, 1, 40), (200,)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i: i + 1]) for i in range(len(x))])
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-5)
    assert torch.equal(alone.argmax(1), together.argmax(1))
    accuracy_alone = (alone.argmax(1) == y).double().mean().item()
    assert meta["score_exported"] == pytest.approx(accuracy_alone, abs=1.5 / len(y))

    # The supernet's path normalises a lone sample with its own statistics: near chance. The
    # export answers it as the supernet answers the whole batch.
    net = objective.supernet.standalone(result.arch).eval()
    with torch.no_grad():
        batch_statistics_alone = torch.cat([net(x[i: i + 1]) for i in range(len(x))])
    accuracy_before = (batch_statistics_alone.argmax(1) == y).double().mean().item()
    chance = 1 / 10
    assert accuracy_alone > max(2 * chance, accuracy_before + 0.1), (accuracy_alone, accuracy_before)
    assert accuracy_alone > result.supernet_score - 0.05, (accuracy_alone, result.supernet_score)


def test_recalibration_averages_the_batch_statistics_weighted_by_batch_size():
    net = torch.nn.Sequential(torch.nn.Conv1d(2, 3, 1), torch.nn.BatchNorm1d(3, track_running_stats=False))
    net.eval()
    assert with_running_stats(net) is net and net[1].track_running_stats
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 2, 5, generator=gen) * 3 + 1 for n in (8, 2, 5)]
    assert recalibrate_batch_norm(net, batches) == 15
    assert not net.training and net[1].momentum == 0.1  # the mode and the momentum are restored
    with torch.no_grad():
        features = [net[0](b) for b in batches]  # (B, 3, 5)
    sizes = torch.tensor([8.0, 2.0, 5.0])
    means = torch.stack([f.mean((0, 2)) for f in features])
    variances = torch.stack([f.transpose(0, 1).reshape(3, -1).var(1) for f in features])  # unbiased, as torch's
    torch.testing.assert_close(net[1].running_mean, (sizes[:, None] * means).sum(0) / 15)
    torch.testing.assert_close(net[1].running_var, (sizes[:, None] * variances).sum(0) / 15)
    # In evaluation mode a sample's output no longer depends on its batch.
    x = batches[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.cat([net(x[i: i + 1]) for i in range(len(x))]), net(x))
    # A network without batch norm is left alone, its batches unread.
    assert recalibrate_batch_norm(torch.nn.Linear(2, 2), iter(())) == 0


@pytest.mark.parametrize("value", ["0", "-3", "many", "2.5"])
def test_bad_calibration_sample_counts_are_refused_with_exit_2(tmp_path, value):
    result = CliRunner().invoke(cli, ["export", str(tmp_path), "--calibration-samples", value])
    assert result.exit_code == 2 and value in result.output and "--calibration-samples" in result.output, \
        result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("value", [0, -3, "many", 2.5, True])
def test_bad_calibration_sample_counts_are_refused_before_the_run_is_read(tmp_path, value):
    with pytest.raises(wpl_nas.ConfigError, match=f"calibration_samples={value!r}"):
        export_run(tmp_path, calibration_samples=value)


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
    ("export", ["--calibration-samples", "0"], "0 is not in the range x>=1"),
    ("retrain", ["--trial", "99"], "trial 99 of run"),
])
def test_bad_trials_are_refused(run_dir, command, args, message):
    result = CliRunner().invoke(cli, [command, str(run_dir), *args])
    assert result.exit_code == 2 and message in result.output, result.output

"""The fast path: per-candidate step budgets (--steps), mixed precision (--precision) and the
channels_last memory format (--channels-last), on a CPU. Tiny and fast."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch
from conftest import make_trainer, search_tiny
from torch.utils.data import TensorDataset

import wpl_nas
from wpl_nas.errors import ConfigError
from wpl_nas.supernet import Supernet
from wpl_nas.training.precision import autocast, resolve_channels_last, resolve_precision

# make_trainer's 256 samples in batches of 64: 4 steps an epoch.
SAMPLES, STEPS_PER_EPOCH = 256, 4


def weights(trainer: wpl_nas.CandidateTrainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.supernet.parameters()]


def first_arch(space: wpl_nas.SearchSpace) -> wpl_nas.Architecture:
    return space.sample(random.Random(0))


# --- the step budget --------------------------------------------------------------------------
def test_a_step_budget_trains_exactly_that_many_steps_across_epochs(tiny_space, mnist1d):
    trainer = make_trainer(tiny_space, mnist1d, train_samples=SAMPLES)
    trainer.steps = 10  # two whole epochs and half of a third
    assert (trainer.steps_per_epoch, trainer.planned_epochs, trainer.total_steps) == (STEPS_PER_EPOCH, 3, 10)
    calls: list[int] = []
    result = trainer.train(first_arch(tiny_space), trial_index=0, progress=lambda: calls.append(1))
    assert result.steps == len(calls) == 10
    assert len(result.epoch_scores) == 3 and math.isfinite(result.score)  # scored after each epoch started
    ctx = trainer.context(first_arch(tiny_space), 0)
    assert (ctx.epochs, ctx.steps_per_epoch, ctx.budget) == (3, STEPS_PER_EPOCH, 10)
    assert [ctx.steps_in_epoch(e) for e in range(4)] == [4, 4, 2, 0]


def test_a_budget_of_whole_epochs_trains_exactly_as_those_epochs_do(tiny_space, mnist1d):
    """Same data order per epoch as without a budget: 8 steps are the same 2 epochs, bit for bit."""
    arch = first_arch(tiny_space)
    by_epochs = make_trainer(tiny_space, mnist1d, epochs=2, train_samples=SAMPLES)
    a = by_epochs.train(arch, trial_index=3)
    by_steps = make_trainer(tiny_space, mnist1d, epochs=1, train_samples=SAMPLES)
    by_steps.steps = 2 * STEPS_PER_EPOCH
    b = by_steps.train(arch, trial_index=3)
    assert (a.steps, a.epoch_scores, a.loss) == (b.steps, b.epoch_scores, b.loss)
    for x, y in zip(weights(by_epochs), weights(by_steps), strict=True):
        assert torch.equal(x, y)


def test_an_optuna_report_comes_after_every_epoch_started_and_pruning_stops_the_budget(tiny_space, mnist1d):
    trainer = make_trainer(tiny_space, mnist1d, train_samples=SAMPLES)
    trainer.steps = 6
    reports: list[int] = []
    result = trainer.train(first_arch(tiny_space), trial_index=0, on_epoch=lambda e, s: reports.append(e) or False)
    assert reports == [0, 1] and result.steps == 6
    result = trainer.train(first_arch(tiny_space), trial_index=1, on_epoch=lambda e, s: True)
    assert result.pruned and result.steps == STEPS_PER_EPOCH


def test_hat_anneals_over_a_partial_last_epoch_and_ends_trained(tiny_space, mnist1d):
    trainer = make_trainer(tiny_space, mnist1d, strategy="hat", train_samples=SAMPLES)
    trainer.steps = 6  # one whole epoch, then 2 steps of the second
    hat = trainer.strategy
    seen: list[int] = []
    original = hat.after_step

    def spy(ctx):  # the epoch length HAT anneals over, at each step
        seen.append(hat._plan.batches)
        original(ctx)

    hat.after_step = spy
    result = trainer.train(first_arch(tiny_space), trial_index=0)
    assert result.steps == 6 and seen == [4, 4, 4, 4, 2, 2]
    assert not hat._training  # trained: later forward passes gate at s_max
    trainer.consolidate(first_arch(tiny_space), trial_index=0, score=result.score)


def test_a_search_with_steps_completes_and_resumes_with_another_budget(tiny_space_file, data_dir, tmp_path):
    first = search_tiny(tiny_space_file, data_dir, tmp_path, steps=5, trials=2)
    assert first.study.get_trials()[0].user_attrs["score_at_training"] >= 0.0
    resumed = search_tiny(tiny_space_file, data_dir, tmp_path, steps=7, trials=3)  # steps may change on resume
    assert len(resumed.study.get_trials()) == 3
    history = (tmp_path / tiny_space_file.stem / "config.yaml").read_text()
    assert "steps" in history


# --- mixed precision --------------------------------------------------------------------------
def test_the_defaults_change_nothing_on_a_cpu():
    config = wpl_nas.SearchConfig()
    assert (config.steps, config.precision, config.channels_last) == (0, "auto", "auto")
    assert resolve_precision(config.precision, "cpu") == "fp32"
    assert resolve_channels_last(config.channels_last, "cpu") is False
    net = torch.nn.Linear(3, 2)
    parts = wpl_nas.assemble(_tiny_net(), config, device="cpu")
    assert (parts.precision, parts.channels_last) == ("fp32", False)
    with autocast(torch.device("cpu"), "fp32"):
        assert net(torch.randn(1, 3)).dtype == torch.float32


def _tiny_net() -> Supernet:
    space = wpl_nas.load_space("nb201")
    torch.manual_seed(0)
    return Supernet(space, in_channels=3, num_classes=10, input_shape=(3, 8, 8))


@pytest.mark.parametrize("bad, option", [("fp8", "precision"), ("yes", "channels_last")])
def test_an_unknown_precision_or_format_is_refused_with_the_choices(bad, option):
    with pytest.raises(ConfigError, match=rf"{option} '{bad}'.*valid choices: auto"):
        wpl_nas.SearchConfig(**{option: bad}).validate()
    with pytest.raises(ConfigError, match="valid choices"):
        (resolve_precision if option == "precision" else resolve_channels_last)(bad, "cpu")


def test_bf16_on_a_cpu_trains_scores_and_consolidates_finitely(tiny_space, mnist1d):
    arch = first_arch(tiny_space)
    fp32 = make_trainer(tiny_space, mnist1d, strategy="wpl", train_samples=512)
    bf16 = make_trainer(tiny_space, mnist1d, strategy="wpl", train_samples=512)
    bf16.precision = "bf16"
    a, b = fp32.train(arch, trial_index=0), bf16.train(arch, trial_index=0)
    assert math.isfinite(b.loss) and abs(a.loss - b.loss) < 0.05 * a.loss  # bf16 keeps ~3 significant digits
    assert abs(a.score - b.score) < 0.1
    bf16.consolidate(arch, trial_index=0, score=b.score)  # the Fisher estimate, under autocast
    state = bf16.strategy.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v) and v.is_floating_point())
    assert all(p.dtype == torch.float32 for p in bf16.supernet.parameters())  # weights stay float32


def test_a_bf16_search_on_a_cpu_completes_with_sensible_scores(tiny_space_file, data_dir, tmp_path):
    result = search_tiny(tiny_space_file, data_dir, tmp_path, precision="bf16", steps=10)
    for trial in result.study.get_trials():
        assert math.isfinite(trial.value) and trial.value > 0.1  # above chance for 10 classes


def test_fp16_works_on_a_cpu_with_a_gradient_scaler(tiny_space, mnist1d):
    """torch's CPU autocast supports float16 (2.x): it is allowed, with its gradient scaler."""
    assert resolve_precision("fp16", "cpu") == "fp16"
    trainer = make_trainer(tiny_space, mnist1d, strategy="wpl", train_samples=SAMPLES)
    trainer.precision, trainer.scaler = "fp16", torch.amp.GradScaler("cpu")
    result = trainer.train(first_arch(tiny_space), trial_index=0)
    assert math.isfinite(result.loss) and result.steps == STEPS_PER_EPOCH and 0.0 <= result.score <= 1.0
    trainer.consolidate(first_arch(tiny_space), trial_index=0, score=result.score)


def test_fp16_is_refused_for_hat_whose_embeddings_the_scaler_does_not_reach(mnist1d, tiny_space):
    options = SimpleNamespace(lr=0.05, momentum=0.9, weight_decay=0.0, batch_size=64, grad_clip=5.0,
                              eval_batch_size=256, precision="fp16")
    with pytest.raises(ConfigError, match=r"precision 'fp16' cannot train strategy 'hat\+distill'.*bf16"):
        wpl_nas.assemble(wpl_nas.build_supernet(tiny_space, mnist1d), options, device="cpu", strategy="hat+distill")


# --- channels_last ---------------------------------------------------------------------------
def test_channels_last_matches_the_default_format_on_a_2d_space():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 3, 8, 8, generator=g), torch.randint(0, 10, (96,), generator=g)
    space = wpl_nas.load_space("nb201")
    arch = space.sample(random.Random(1))
    runs = {}
    for fmt in ("off", "on"):
        options = SimpleNamespace(lr=0.05, momentum=0.9, weight_decay=0.0, batch_size=32, grad_clip=5.0,
                                  eval_batch_size=64, channels_last=fmt)
        parts = wpl_nas.assemble(_tiny_net(), options, device="cpu", strategy="wpl")
        trainer = parts.trainer(train_set=TensorDataset(x, y), held_out=TensorDataset(x, y), eval_set=(x, y),
                                epochs=1, seed=0)
        if fmt == "on":
            assert parts.channels_last and trainer.eval_x.is_contiguous(memory_format=torch.channels_last)
            assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                       for p in parts.supernet.parameters())
        with torch.no_grad(), parts.supernet.use(arch):
            logits = parts.supernet(trainer.eval_x[:16])
        result = trainer.train(arch, trial_index=0)
        trainer.consolidate(arch, trial_index=0, score=result.score)
        runs[fmt] = logits, result.loss, weights(trainer)
    torch.testing.assert_close(runs["on"][0], runs["off"][0], rtol=1e-4, atol=1e-5)  # the same weights
    assert runs["on"][1] == pytest.approx(runs["off"][1], rel=1e-4)
    for a, b in zip(runs["on"][2], runs["off"][2], strict=True):  # 3 SGD steps apart, sums reassociated
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)

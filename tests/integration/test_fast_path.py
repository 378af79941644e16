"""The fast path: per-candidate step budgets (--steps), mixed precision (--precision) and the
channels_last memory format (--channels-last), on a CPU. Tiny and fast."""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import TEST_DEVICE, make_trainer, search_tiny
from torch.utils.data import TensorDataset

import wpl_nas
from wpl_nas.errors import ConfigError
from wpl_nas.strategies.distill import DistillOptions
from wpl_nas.strategies.ewc import EWCOptions
from wpl_nas.strategies.importance import empirical_fisher
from wpl_nas.strategies.mas import MASOptions
from wpl_nas.strategies.synthetic import REAL_BATCH, Synthesis, SyntheticOptions, SyntheticStrategy
from wpl_nas.supernet import Supernet
from wpl_nas.training.precision import MeasuringScale, autocast, resolve_channels_last, resolve_precision

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
    trainer.precision, trainer.scaler = "fp16", torch.amp.GradScaler(trainer.device.type)
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
    x, y = x.to(TEST_DEVICE), y.to(TEST_DEVICE)
    space = wpl_nas.load_space("nb201")
    arch = space.sample(random.Random(1))
    runs = {}
    for fmt in ("off", "on"):
        options = SimpleNamespace(lr=0.05, momentum=0.9, weight_decay=0.0, batch_size=32, grad_clip=5.0,
                                  eval_batch_size=64, channels_last=fmt)
        parts = wpl_nas.assemble(_tiny_net(), options, device=TEST_DEVICE, strategy="wpl")
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


# --- fp16: the gradient scaler's state and the strategies' own backward ------------------------
def _fp16_config(space_file, data_dir, runs_dir, trials: int, strategy: str = "distill") -> wpl_nas.SearchConfig:
    return wpl_nas.SearchConfig(space=str(space_file), data_dir=str(data_dir), runs_dir=str(runs_dir),
                                study_name="fp16", trials=trials, epochs=1, train_samples=256, batch_size=64,
                                eval_samples=200, device=TEST_DEVICE, threads=1, precision="fp16", strategy=strategy,
                                sampler="random", pool_best=1, pool_recent=1)


def _run_state(result: wpl_nas.SearchResult) -> tuple[list[object], dict[str, torch.Tensor], dict[str, object]]:
    state = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)
    values = [t.value for t in result.study.get_trials()]
    return values, {**state["supernet"], **{f"s.{k}": v for k, v in state["strategy"].items()}}, state["trainer"]


def test_an_fp16_search_stopped_and_resumed_equals_an_uninterrupted_one(tiny_space_file, data_dir, tmp_path,
                                                                       monkeypatch):
    """The scaler's scale, which backs off on overflow during the search, travels in the checkpoint."""
    # A real scaler starting high (2^20, where this tiny space overflows now and then), so that its
    # scale moves within three 4-step candidates: at torch's 2^16 it would not, and the test could not fail.
    init = 2.0 ** 20
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=init))
    whole = _run_state(wpl_nas.run_search(_fp16_config(tiny_space_file, data_dir, tmp_path / "whole", 3),
                                          progress=False, command=["t"]))
    assert whole[2]["scaler"]["scale"] < init  # it backed off
    config = _fp16_config(tiny_space_file, data_dir, tmp_path / "split", 2)
    wpl_nas.run_search(config, progress=False, command=["t"])
    resumed = _run_state(wpl_nas.run_search(config.replace(trials=3), progress=False, command=["t"]))
    assert resumed[0] == whole[0] and resumed[2] == whole[2]
    assert resumed[1].keys() == whole[1].keys()
    for name, tensor in whole[1].items():
        assert torch.equal(tensor, resumed[1][name]), name


def test_a_checkpoint_without_a_scaler_state_still_resumes_and_a_forged_one_is_refused(
        tiny_space_file, data_dir, tmp_path):
    config = _fp16_config(tiny_space_file, data_dir, tmp_path, 1, strategy="naive")
    result = wpl_nas.run_search(config, progress=False, command=["t"])
    path = result.run_dir / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    good = state.pop("trainer")
    torch.save(state, path)  # as written before the scaler was saved
    assert len(wpl_nas.run_search(config.replace(trials=2), progress=False, command=["t"]).study.get_trials()) == 2
    state = torch.load(path, weights_only=True)
    state["trainer"] = {"scaler": {**good["scaler"], "scale": float("nan")}}
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"does not fit this run.*scale must be a finite positive number"):
        wpl_nas.run_search(config.replace(trials=3), progress=False, command=["t"])


def _replay_gradient(tiny_space, mnist1d, precision: str, *, scaled: bool = True) -> torch.Tensor:
    """The gradient distill's own backward adds on one step of a second candidate: the trainer's state
    after the candidate's unscaled backward, with a λ so small that fp16's range flushes it unscaled."""
    torch.manual_seed(0)
    trainer = make_trainer(tiny_space, mnist1d, strategy="distill", options=DistillOptions(lam=1e-5, protect=2),
                           train_samples=SAMPLES)
    archs = [tiny_space.sample(random.Random(i)) for i in (0, 1)]
    first = trainer.train(archs[0], trial_index=0)
    trainer.consolidate(archs[0], trial_index=0, score=first.score)
    trainer.precision = precision
    trainer.scaler = torch.amp.GradScaler(trainer.device.type) if precision == "fp16" else None
    ctx = trainer.context(archs[1], 1)
    if not scaled:
        ctx.scaler = None  # what a plain loss.backward() in the strategy did
    net, opt = trainer.supernet, trainer.optimizer
    net.set_arch(archs[1])
    with torch.no_grad():  # the drift the replay repairs: without it the teacher is the student, the gradient 0
        g = torch.Generator().manual_seed(0)
        for p in ctx.params.values():
            p.add_(0.1 * torch.randn(p.shape, generator=g).to(p.device))
    trainer.strategy.before_candidate(ctx)
    x, y = trainer.train_set.tensors[0][:64], trainer.train_set.tensors[1][:64]
    ctx.batch = (x, y)
    opt.zero_grad(set_to_none=False)
    for p in net.parameters():  # a zero gradient everywhere: what remains is the strategy's alone
        p.grad = torch.zeros_like(p)
    if trainer.scaler is not None:  # the trainer's order: scale the loss (a zero one), unscale, after_backward
        trainer.scaler.scale(torch.zeros((), device=trainer.device))
        trainer.scaler.unscale_(opt)
    with autocast(trainer.device, precision):
        trainer.strategy.after_backward(ctx)
    return torch.cat([p.grad.flatten() for p in ctx.params.values()])


def test_the_replay_gradient_under_fp16_is_scaled_and_matches_fp32(tiny_space, mnist1d):
    fp32 = _replay_gradient(tiny_space, mnist1d, "fp32")
    fp16 = _replay_gradient(tiny_space, mnist1d, "fp16")
    plain = _replay_gradient(tiny_space, mnist1d, "fp16", scaled=False)
    assert fp32.abs().max() > 0
    # Unscaled, fp16 loses it (activation gradients under its smallest subnormal, 6e-8, flush to 0)...
    assert (plain - fp32).norm() > 0.5 * fp32.norm()
    # ...scaled, it matches fp32 to fp16's precision.
    assert (fp16 - fp32).norm() < 0.05 * fp32.norm()


def test_a_non_finite_strategy_gradient_skips_the_step_and_backs_the_scale_off(tiny_space, mnist1d):
    trainer = make_trainer(tiny_space, mnist1d, train_samples=SAMPLES)
    trainer.precision, trainer.scaler = "fp16", torch.amp.GradScaler(trainer.device.type, init_scale=2.0 ** 10)
    arch = first_arch(tiny_space)
    ctx = trainer.context(arch, 0)
    trainer.supernet.set_arch(arch)
    with pytest.raises(RuntimeError, match="after_backward"):  # no unscale_ this step yet
        ctx.backward(trainer.supernet(trainer.eval_x[:8]).sum())
    before = weights(trainer)
    x = trainer.eval_x[:8]
    with autocast(trainer.device, "fp16"):
        loss = F.cross_entropy(trainer.supernet(x), trainer.eval_y[:8])
    trainer.scaler.scale(loss).backward()
    trainer.scaler.unscale_(trainer.optimizer)
    with autocast(trainer.device, "fp16"):
        ctx.backward(trainer.supernet(x).sum() * float("inf"))
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, weights(trainer), strict=True))  # skipped
    assert trainer.scaler.get_scale() == 2.0 ** 9  # backed off


def test_a_measured_gradient_under_fp16_is_scaled_and_matches_fp32(tiny_space, mnist1d):
    """ctx.grad (ANPyC's pruning score): tiny gradients survive fp16 with the scaler's scale."""
    trainer = make_trainer(tiny_space, mnist1d, train_samples=SAMPLES)
    arch = first_arch(tiny_space)
    trainer.supernet.set_arch(arch)
    ctx = trainer.context(arch, 0)
    params = list(ctx.params.values())
    x = trainer.eval_x[:64]

    def measured(precision: str, scaler: torch.amp.GradScaler | None) -> torch.Tensor:
        ctx.scaler = scaler
        with autocast(trainer.device, precision):
            # An fp32 scalar (as autocast's losses are) whose logit gradients, ~1e-8, lie under fp16's range.
            output = 1e-5 * trainer.supernet(x).float().logsumexp(dim=1).mean()
        return torch.cat([g.flatten() for g in ctx.grad(output, params) if g is not None])

    fp32 = measured("fp32", None)
    plain = measured("fp16", None)
    scaled = measured("fp16", torch.amp.GradScaler(trainer.device.type))
    assert fp32.abs().max() > 0 and (plain - fp32).norm() > 0.5 * fp32.norm()
    assert (scaled - fp32).norm() < 0.05 * fp32.norm()


# --- fp16: the gradients measured at consolidation (Fisher, MAS, ANPyC; synthetic's meta-gradient) --------
def _importance(tiny_space, mnist1d, strategy: str, options: object, precision: str, *, scaled: bool) -> torch.Tensor:
    """Ω after consolidating one candidate whose classifier is 1e4 times smaller than initialised: the
    gradients reaching the layers below it are ~1e-4 times the logits', under fp16's smallest
    subnormal (6e-8). ``scaled=False`` consolidates fp16 without a scaler (what it did before)."""
    trainer = make_trainer(tiny_space, mnist1d, strategy, options=options, train_samples=SAMPLES)
    trainer.precision = precision
    trainer.scaler = torch.amp.GradScaler(trainer.device.type) if scaled and precision == "fp16" else None
    arch = first_arch(tiny_space)
    with torch.no_grad():
        dict(trainer.supernet.named_parameters())["head.4.weight"].mul_(1e-4)
    trainer.consolidate(arch, trial_index=0, score=0.5)
    strategy_ = trainer.strategy
    names = [n for n in trainer.context(arch, 0).params if strategy_.protectable(n) and not n.startswith("head.4")]
    assert names
    return torch.cat([strategy_.layout.view(strategy_.omega, n).flatten() for n in names])  # type: ignore[union-attr,operator]


@pytest.mark.parametrize(("strategy", "options"), [
    ("wpl", None), ("ewc", EWCOptions(per_sample=False)), ("mas", MASOptions(per_sample=False)), ("anpyc", None)])
def test_the_importance_under_fp16_is_loss_scaled_and_matches_fp32(tiny_space, mnist1d, strategy, options):
    fp32 = _importance(tiny_space, mnist1d, strategy, options, "fp32", scaled=False)
    unscaled = _importance(tiny_space, mnist1d, strategy, options, "fp16", scaled=False)
    scaled = _importance(tiny_space, mnist1d, strategy, options, "fp16", scaled=True)
    assert fp32.abs().max() > 0 and torch.isfinite(scaled).all()
    # Unscaled, fp16 flushes the small gradients (measured: 83-149% off)...
    assert (unscaled - fp32).norm() > 0.5 * fp32.norm()
    # ...scaled and unscaled in float32 before squaring, the importance matches fp32's (measured: < 1% off).
    assert (scaled - fp32).norm() < 0.05 * fp32.norm()


def test_a_batch_whose_fp16_forward_overflows_is_left_out_of_the_fisher_with_a_warning(tiny_space, mnist1d):
    trainer = make_trainer(tiny_space, mnist1d, train_samples=SAMPLES)
    arch = first_arch(tiny_space)
    trainer.supernet.set_arch(arch)
    names = list(trainer.context(arch, 0).params)
    x, y = trainer.eval_x[:32], trainer.eval_y[:32]
    # 1e6 times the inputs: the first convolution's fp16 output overflows, at every loss scale.
    batches = [(x, y), (x * 1e6, y)]

    def fisher(held: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        with autocast(trainer.device, "fp16"):
            return empirical_fisher(trainer.supernet, names, lambda size, count: iter(held), batch_size=32,
                                    batches=len(held), per_sample=False, scale=MeasuringScale(2.0 ** 16))

    with pytest.warns(RuntimeWarning, match=r"fp16: 1 of 2 batch\(es\) of the Fisher gave non-finite gradients"):
        both = fisher(batches)
    alone = fisher(batches[:1])
    assert all(torch.isfinite(f).all() for f in both)
    assert all(torch.equal(a, b) for a, b in zip(both, alone, strict=True))  # the mean of the one finite batch


def test_a_measuring_scale_halves_on_overflow_and_keeps_the_scale_that_worked():
    scale = MeasuringScale(2.0 ** 16)
    tried: list[float] = []
    true = torch.tensor([3e-6, -1.0])

    def grads_of(s: float) -> tuple[torch.Tensor | None, ...]:
        tried.append(s)
        return (true * s if s <= 2.0 ** 10 else torch.tensor([float("inf"), 0.0])), None

    first = scale.grads(grads_of)
    assert first is not None and torch.equal(first[0], true) and first[1] is None  # type: ignore[arg-type]
    assert tried == [2.0 ** k for k in range(16, 9, -1)] and scale.scale == 2.0 ** 10
    tried.clear()
    scale.grads(grads_of)
    assert tried == [2.0 ** 10]  # the next batch starts where the last one succeeded
    assert scale.grads(lambda s: (torch.tensor([float("nan")]),)) is None and scale.skipped == 1
    assert scale.scale == 1.0
    with pytest.raises(ValueError, match="finite positive"):
        MeasuringScale(float("nan"))


def test_synthetic_meta_gradients_under_fp16_are_scaled_and_a_step_overflowing_at_every_scale_is_skipped(
        tiny_space, mnist1d):
    trainer = make_trainer(tiny_space, mnist1d, "synthetic", train_samples=SAMPLES,
                           options=SyntheticOptions(outer_steps=2, inner_steps=1, protect=2))
    strategy = trainer.strategy
    assert isinstance(strategy, SyntheticStrategy)
    arch = first_arch(tiny_space)
    x, y = trainer.eval_x[:128], trainer.eval_y[:128]

    def synthesize(scale: float) -> tuple[Synthesis | None, MeasuringScale]:
        # The initial set from plain samples; the outer loss's real batches (of REAL_BATCH) scaled by `scale`.
        def held_out(size: int, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return iter([(x * scale, y)] * count if size == REAL_BATCH else [(x, y)])

        measuring = MeasuringScale(2.0 ** 16)
        with trainer.supernet.use(arch), autocast(trainer.device, "fp16"):
            return strategy.synthesize(trainer.supernet, arch, held_out, seed=0, scale=measuring), measuring

    learned, measuring = synthesize(1.0)
    assert learned is not None and len(learned.outer_losses) == 2 and measuring.skipped == 0
    assert torch.isfinite(learned.inputs).all() and not torch.equal(learned.inputs, learned.initial)
    # Real inputs 1e6 times larger overflow fp16 in the forward pass: no scale helps, every outer step
    # is skipped and said so; the set stays the finite initial one rather than turn NaN.
    with pytest.warns(RuntimeWarning, match=r"fp16: 2 of 2 batch\(es\) of a synthetic set's meta-gradient"):
        skipped, measuring = synthesize(1e6)
    assert skipped is not None and measuring.skipped == 2 and skipped.outer_losses == []
    assert torch.equal(skipped.inputs, skipped.initial) and torch.isfinite(skipped.targets).all()


def test_si_under_fp16_passes_over_the_steps_the_scaler_skips(tiny_space, mnist1d):
    """A scale of 2^24 overflows the first steps' gradients: the scaler skips them (Δθ = 0), and SI's
    path integral, −g·Δθ, takes nothing from them rather than inf·0 = NaN; the steps after count."""
    trainer = make_trainer(tiny_space, mnist1d, "si", train_samples=SAMPLES, epochs=4)
    trainer.precision, trainer.scaler = "fp16", torch.amp.GradScaler(trainer.device.type, init_scale=2.0 ** 24)
    arch = first_arch(tiny_space)
    before = weights(trainer)
    result = trainer.train(arch, trial_index=0)
    assert trainer.scaler.get_scale() < 2.0 ** 24  # steps were skipped (the scale backed off)...
    assert any(not torch.equal(a, b) for a, b in zip(before, weights(trainer), strict=True))  # ...and others taken
    trainer.consolidate(arch, trial_index=0, score=result.score)
    omega = trainer.strategy.omega
    assert isinstance(omega, torch.Tensor) and torch.isfinite(omega).all() and omega.abs().max() > 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize(("strategy", "options"), [("ewc", EWCOptions(per_sample=True)),
                                                   ("mas", MASOptions(per_sample=True))])
def test_per_sample_importance_is_measured_in_float32_under_autocast(tiny_space, mnist1d, strategy, options, precision):
    # torch.func's batched backward failed under autocast ("expected scalar type Half but found
    # Float"): ewc, online-ewc and mas (per-sample by default) crashed at consolidation with
    # --precision bf16 or fp16. Measured in float32, Ω is fp32's on the same weights, exactly.
    fp32 = _importance(tiny_space, mnist1d, strategy, options, "fp32", scaled=False)
    mixed = _importance(tiny_space, mnist1d, strategy, options, precision, scaled=True)
    assert fp32.abs().max() > 0 and torch.equal(mixed, fp32)

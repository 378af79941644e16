"""Replay strategies, ``distill`` and ``synthetic``: behaviour beyond the shared contract."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import make_trainer
from torch.func import functional_call
from torch.utils.data import TensorDataset

import wpl_nas
from wpl_nas.strategies import CandidateContext, DistillOptions, SyntheticOptions
from wpl_nas.strategies.distill import DistillStrategy
from wpl_nas.strategies.synthetic import SyntheticStrategy

A = "|conv_5~0|+|conv_5~0|conv_5~1|+|none~0|skip_connect~1|conv_5~2|"
B = "|conv_5~0|+|skip_connect~0|conv_5~1|+|conv_5~0|none~1|conv_5~2|"
C = "|skip_connect~0|+|conv_5~0|none~1|+|conv_5~0|conv_5~1|skip_connect~2|"
D = "|conv_5~0|+|conv_5~0|skip_connect~1|+|skip_connect~0|conv_5~1|none~2|"

#: Small meta-learning budget so a consolidation takes well under a second on a CPU.
FAST_SYNTHETIC = {"outer_steps": 4, "inner_steps": 2}
NAMES = ["distill", "synthetic"]
#: The seeded scenario every test starts from: A trained on 1600 samples for 2 epochs.
SCENARIO = {"epochs": 2, "train_samples": 1600, "lr": 0.1, "seed": 0}


def options(name: str, **overrides: Any) -> Any:
    if name == "distill":
        return DistillOptions(**overrides)
    return SyntheticOptions(**{**FAST_SYNTHETIC, **overrides})


def weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def trained_a(tiny_space, mnist1d) -> dict[str, Any]:
    """A trained once (naive: no strategy acts before a consolidation), shared by the tests."""
    tr = make_trainer(tiny_space, mnist1d, "naive", **SCENARIO)
    result = tr.train(tiny_space.parse(A), trial_index=0)
    return {"net": weights(tr.supernet), "opt": copy.deepcopy(tr.optimizer.state_dict()), "score": result.score}


def after_a(space, data, name: str, trained: dict[str, Any], opts: Any = None,
            consolidate: bool = True) -> wpl_nas.CandidateTrainer:
    """A trainer of strategy ``name`` right after A's training (and consolidation)."""
    tr = make_trainer(space, data, name, options=opts, **SCENARIO)
    tr.supernet.load_state_dict(trained["net"])
    tr.optimizer.load_state_dict(copy.deepcopy(trained["opt"]))  # SGD updates its buffers in place
    if consolidate:
        tr.consolidate(space.parse(A), trial_index=0, score=trained["score"])
    return tr


def shrink(tr: wpl_nas.CandidateTrainer, samples: int) -> None:
    tr.train_set = TensorDataset(*(t[:samples] for t in tr.train_set.tensors))


def disturb(tr: wpl_nas.CandidateTrainer, arch: wpl_nas.Architecture, seed: int = 0) -> None:
    """Move ``arch``'s weights a little, as training another candidate would (KD is 0 at the
    consolidated weights, so replay has nothing to pull back before that)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tr.supernet.parameters_of(arch).values():
            p.add_(0.05 * p.std(unbiased=False) * torch.randn(p.shape, generator=gen))


def one_step(tr: wpl_nas.CandidateTrainer, arch: wpl_nas.Architecture, batch: tuple[torch.Tensor, torch.Tensor]
             ) -> CandidateContext:
    """The trainer's step up to (and including) the strategy's ``after_backward``."""
    net, strat = tr.supernet, tr.strategy
    ctx = tr.context(arch, trial_index=1)
    net.set_arch(arch)
    strat.before_candidate(ctx)
    ctx.batch = batch
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(batch[0]), batch[1]).backward()
    strat.after_backward(ctx)
    return ctx


def val_batch(data, n: int = 64, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.val.tensors
    return x[start: start + n], y[start: start + n]


# --- both --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_replay_drops_the_gradients_it_puts_off_the_current_path(name, tiny_space, mnist1d, trained_a):
    a, b = tiny_space.parse(A), tiny_space.parse(B)
    tr = after_a(tiny_space, mnist1d, name, trained_a, options(name))
    net = tr.supernet
    disturb(tr, b)
    x, y = val_batch(mnist1d)
    net.set_arch(b)
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    plain = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    ctx = one_step(tr, b, (x, y))

    assert net.arch == b  # the student ran A's path; B's is restored
    on_path = set(ctx.params)
    a_private = [n for n in net.parameter_names_of(a) if n not in on_path]
    assert a_private, "the test needs ops of A off B's path (the student runs them)"
    for n, p in net.named_parameters():
        if n not in on_path:
            assert p.grad is None, n
    shared = [n for n in net.parameter_names_of(a) if n in on_path and n in plain]
    replayed = {n: ctx.params[n].grad for n in shared}
    assert any(g is not None and not torch.equal(plain[n], g) for n, g in replayed.items())  # replay acted
    assert (tr.strategy.penalty(ctx) or 0.0) > 0

    # And through whole training steps: weights off B's path are bit-identical afterwards.
    shrink(tr, 256)
    before = weights(net)
    tr.train(b, trial_index=1)
    after = weights(net)
    for n in a_private:
        assert torch.equal(before[n], after[n]), n


@pytest.mark.parametrize("name", NAMES)
def test_protected_set_and_buffers_stay_bounded(name, tiny_space, mnist1d):
    cheap = {"per_class": 1, "outer_steps": 1, "inner_steps": 1} if name == "synthetic" else {}
    tr = make_trainer(tiny_space, mnist1d, name, options=options(name, protect=2, **cheap), train_samples=64)
    strat, net = tr.strategy, tr.supernet
    sizes = {k: v.numel() for k, v in strat.state_dict().items() if k != "_extra_state"}
    scored = [(A, 0.1), (B, 0.5), (C, 0.3), (D, 0.9)]
    for i, (arch, score) in enumerate(scored):
        tr.consolidate(tiny_space.parse(arch), trial_index=i, score=score)
    assert strat.protected.members == [tiny_space.parse(B), tiny_space.parse(D)]
    if isinstance(strat, DistillStrategy):
        assert strat.teacher.numel() == sum(p.numel() for p in net.parameters())
        assert {k: v.numel() for k, v in strat.state_dict().items() if k != "_extra_state"} == sizes
    else:
        assert isinstance(strat, SyntheticStrategy)
        assert sorted(map(str, filter(None, strat._slots))) == sorted([B, D])  # released sets were replaced
        assert strat.inputs.shape == (2, strat.n_syn, 1, 40) and strat.targets.shape == (2, strat.n_syn, 10)
        for arch in (B, D):  # each slot holds its own candidate's logits on its own inputs
            slot = strat.slot_of(tiny_space.parse(arch))
            assert slot is not None
            with torch.no_grad(), net.use(tiny_space.parse(arch)):
                assert torch.allclose(net(strat.inputs[slot]), strat.targets[slot], atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_state_loads_into_a_fresh_strategy_and_replays_alike(name, tiny_space, mnist1d, trained_a):
    b = tiny_space.parse(B)
    tr = after_a(tiny_space, mnist1d, name, trained_a, options(name))
    tr.consolidate(tiny_space.parse(C), trial_index=1, score=0.2)
    state = copy.deepcopy(tr.strategy.state_dict())
    fresh = wpl_nas.create_strategy(name, tr.supernet, options(name))
    fresh.load_state_dict(state)
    restored = fresh.state_dict()
    assert state.keys() == restored.keys()
    for k, v in state.items():
        assert torch.equal(v, restored[k]), k
    assert fresh.protected.members == tr.strategy.protected.members  # type: ignore[union-attr]

    disturb(tr, b)
    batch = val_batch(mnist1d)
    grads = []
    for strategy in (tr.strategy, fresh):
        tr.strategy = strategy
        ctx = one_step(tr, b, batch)
        grads.append({n: p.grad.clone() for n, p in ctx.params.items() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n, g in grads[0].items():
        assert torch.equal(g, grads[1][n]), n


@pytest.mark.parametrize("name", NAMES)
def test_seeded_replay_repeats(name, tiny_space, mnist1d, trained_a):
    b = tiny_space.parse(B)
    runs = []
    for _ in range(2):
        tr = after_a(tiny_space, mnist1d, name, trained_a, options(name))
        shrink(tr, 256)
        result = tr.train(b, trial_index=1)
        runs.append((weights(tr.supernet), tr.strategy.state_dict(), result.penalty))
    assert runs[0][2] == runs[1][2] > 0
    for k, v in runs[0][0].items():
        assert torch.equal(v, runs[1][0][k]), k
    for k, v in runs[0][1].items():
        assert torch.equal(v, runs[1][1][k]), k


def test_replay_retains_the_first_candidate_better_than_naive(tiny_space, mnist1d, trained_a):
    """The WPL paper's two-model experiment in miniature: A is trained, then B (sharing some of
    A's ops); A's accuracy drops less with either replay strategy than without."""
    a, b = tiny_space.parse(A), tiny_space.parse(B)
    drops = {}
    for name in ("naive", "distill", "synthetic"):
        tr = after_a(tiny_space, mnist1d, name, trained_a, None if name == "naive" else options(name))
        before = tr.score(a)
        tr.train(b, trial_index=1)
        drops[name] = before - tr.score(a)
    assert drops["naive"] > 0.05, drops  # the scenario does forget without protection
    assert drops["distill"] < drops["naive"] - 0.05, drops
    assert drops["synthetic"] < drops["naive"] - 0.05, drops


@pytest.mark.parametrize("name", NAMES)
def test_replay_is_off_without_weight(name, tiny_space, mnist1d):
    tr = make_trainer(tiny_space, mnist1d, name, options=options(name, lam=0.0), train_samples=64)
    tr.train(tiny_space.parse(A), trial_index=0)
    tr.consolidate(tiny_space.parse(A), trial_index=0, score=0.5)
    assert len(tr.strategy.protected) == 0
    assert tr.train(tiny_space.parse(B), trial_index=1).penalty == 0.0


@pytest.mark.parametrize(("name", "field"), [("distill", "protect"), ("distill", "teachers_per_step"),
                                             ("synthetic", "per_class"), ("synthetic", "outer_steps")])
def test_bad_options_are_config_errors(name, field, tiny_space, mnist1d):
    net = wpl_nas.build_supernet(tiny_space, mnist1d)
    with pytest.raises(wpl_nas.ConfigError, match=field):
        wpl_nas.create_strategy(name, net, options(name, **{field: 0}))


# --- distill -----------------------------------------------------------------------------------
def test_distill_teacher_weights_hold_the_admitted_paths(tiny_space, mnist1d, trained_a):
    a, c = tiny_space.parse(A), tiny_space.parse(C)
    tr = after_a(tiny_space, mnist1d, "distill", trained_a, DistillOptions(protect=1))
    strat, net = tr.strategy, tr.supernet
    assert isinstance(strat, DistillStrategy)
    path = set(net.parameter_names_of(a))
    for n, p in net.named_parameters():
        assert torch.equal(strat.teacher_of(n), p.detach() if n in path else torch.zeros_like(p)), n
    x, _ = val_batch(mnist1d)
    with torch.no_grad(), net.use(a):  # the teacher is the candidate as consolidated
        teacher = {n: strat.teacher_of(n) for n in path}
        assert torch.equal(functional_call(net, teacher, (x,)), net(x))

    copied = strat.teacher.clone()
    disturb(tr, c)
    tr.consolidate(c, trial_index=1, score=trained_a["score"] - 0.1)  # worse: not admitted
    assert strat.protected.members == [a]
    assert torch.equal(strat.teacher, copied)


def test_distill_round_robin_over_teachers_sharing_weights(tiny_space, mnist1d, monkeypatch):
    a, b, c, d = (tiny_space.parse(s) for s in (A, B, C, D))
    for per_step, expected in ((1, [[a], [c], [d], [a]]), (2, [[a, c], [d, a]])):
        tr = make_trainer(tiny_space, mnist1d, "distill", options=DistillOptions(teachers_per_step=per_step),
                          train_samples=64)
        for i, arch in enumerate((a, b, c, d)):
            tr.consolidate(arch, trial_index=i, score=0.5)
        seen: list[wpl_nas.Architecture] = []

        def record(ctx: Any, member: Any, seen: list = seen) -> torch.Tensor:
            seen.append(member.arch)
            return torch.zeros(())

        monkeypatch.setattr(tr.strategy, "replay", record)
        ctx = tr.context(b, trial_index=4)  # B is protected itself: never its own teacher
        tr.strategy.before_candidate(ctx)
        for step in range(len(expected)):
            tr.strategy.after_backward(ctx)
            assert seen[-per_step:] == expected[step], step


# --- synthetic ---------------------------------------------------------------------------------
def test_synthetic_meta_learning_lowers_its_outer_loss(tiny_space, mnist1d, trained_a):
    """The outer loss of the set at the first and at the last outer step, measured at the same
    disturbances and real batch (each outer step draws its own disturbance, so the raw per-step
    values also vary with it); and the learned set has moved away from the real samples."""
    a = tiny_space.parse(A)
    opts = SyntheticOptions(noise=0.5, outer_steps=10, inner_steps=2)
    tr = after_a(tiny_space, mnist1d, "synthetic", trained_a, opts, consolidate=False)
    strat = tr.strategy
    assert isinstance(strat, SyntheticStrategy)
    real = val_batch(mnist1d, 128)

    def held_out(batch_size: int, num_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter([real] if batch_size == 128 else [val_batch(mnist1d, batch_size)])

    synthesis = strat.synthesize(tr.supernet, a, held_out, seed=0)
    assert synthesis is not None
    assert len(synthesis.outer_losses) == opts.outer_steps
    first = strat.repair_loss(tr.supernet, a, synthesis.initial, real, seed=1)
    last = strat.repair_loss(tr.supernet, a, synthesis.inputs, real, seed=1)
    assert last < first - 0.02, (first, last)
    assert (synthesis.inputs - synthesis.initial).abs().mean() > 0.05
    # The initial set is real held-out data, per_class samples of each class in turn.
    x, y = val_batch(mnist1d, 256)
    for c in range(10):
        rows = synthesis.initial[c * opts.per_class: (c + 1) * opts.per_class]
        assert torch.equal(rows, x[y == c][: opts.per_class]), c


def test_synthetic_sets_are_seeded_by_the_trial(tiny_space, mnist1d, trained_a):
    a = tiny_space.parse(A)
    opts = options("synthetic", outer_steps=2, inner_steps=1)
    tr = after_a(tiny_space, mnist1d, "synthetic", trained_a, opts, consolidate=False)
    strat = tr.strategy
    assert isinstance(strat, SyntheticStrategy)

    def held_out(batch_size: int, num_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter([val_batch(mnist1d, batch_size)])

    runs = [strat.synthesize(tr.supernet, a, held_out, seed=s) for s in (3, 3, 4)]
    assert runs[0] is not None and runs[1] is not None and runs[2] is not None
    assert torch.equal(runs[0].inputs, runs[1].inputs) and torch.equal(runs[0].targets, runs[1].targets)
    assert not torch.equal(runs[0].inputs, runs[2].inputs)


def test_synthetic_without_held_out_data_protects_nothing(tiny_space, mnist1d):
    tr = make_trainer(tiny_space, mnist1d, "synthetic", options=options("synthetic"), train_samples=64)
    a = tiny_space.parse(A)
    ctx = tr.context(a, trial_index=0)
    ctx.score = 0.5
    with tr.supernet.use(a):
        tr.strategy.after_candidate(ctx, lambda batch_size, num_batches: iter([]))
    assert len(tr.strategy.protected) == 0
    assert tr.strategy._slots == [None] * 5


def test_synthetic_fills_a_missing_class_to_keep_its_size(tiny_space, mnist1d):
    tr = make_trainer(tiny_space, mnist1d, "synthetic", options=options("synthetic", per_class=2), train_samples=64)
    strat = tr.strategy
    assert isinstance(strat, SyntheticStrategy)
    x, y = val_batch(mnist1d, 256)
    keep = y < 8  # classes 8 and 9 are missing
    initial = strat._initial_inputs(lambda bs, n: iter([(x[keep], y[keep])]), 10)
    assert initial is not None and initial.shape == (20, 1, 40)
    assert torch.equal(initial[:2], x[y == 0][:2])


@pytest.mark.parametrize("name", ["wpl+distill", "wpl+synthetic"])
def test_replay_composes_with_a_quadratic_penalty(name, tiny_space, mnist1d, trained_a):
    a, b = tiny_space.parse(A), tiny_space.parse(B)
    opts = SyntheticOptions(**FAST_SYNTHETIC) if name.endswith("synthetic") else None
    tr = after_a(tiny_space, mnist1d, name, trained_a, opts)
    shrink(tr, 256)
    before = weights(tr.supernet)
    tr.train(b, trial_index=1)
    after = weights(tr.supernet)
    on_path = set(tr.supernet.parameter_names_of(b))
    assert all(torch.equal(before[n], after[n]) for n in tr.supernet.parameter_names_of(a) if n not in on_path)
    state = copy.deepcopy(tr.strategy.state_dict())
    assert "parts.1._extra_state" in state
    fresh = wpl_nas.create_strategy(name, tr.supernet, opts)
    fresh.load_state_dict(state)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]), k

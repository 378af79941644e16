"""HAT on the supernet: gates, protection of the attended channels, the bounded protected set, state."""

from __future__ import annotations

import copy
import io
import itertools

import pytest
import torch
from conftest import make_trainer

import wpl_nas
from wpl_nas.strategies import HATOptions
from wpl_nas.strategies.hat import HATStrategy

A = "|conv_5~0|+|conv_5~0|conv_5~1|+|none~0|skip_connect~1|conv_5~2|"
B = "|conv_5~0|+|skip_connect~0|conv_5~1|+|conv_5~0|none~1|conv_5~2|"


def options(include_global: bool = False, **kw: object) -> HATOptions:
    return HATOptions(include_global=include_global, **kw)  # type: ignore[arg-type]


def hat_trainer(space, data, opts: HATOptions | None = None, **kw) -> tuple[wpl_nas.CandidateTrainer, HATStrategy]:
    tr = make_trainer(space, data, "hat", options=opts or options(), **kw)
    assert isinstance(tr.strategy, HATStrategy)
    return tr, tr.strategy


def run(tr: wpl_nas.CandidateTrainer, arch: wpl_nas.Architecture, trial: int, score: float | None = None) -> None:
    result = tr.train(arch, trial_index=trial)
    tr.consolidate(arch, trial_index=trial, score=result.score if score is None else score)


def weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def on_path(hat: HATStrategy, arch: wpl_nas.Architecture) -> torch.Tensor:
    return hat._path_units(arch).bool()


def rows_moved(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Per output channel: did any weight of it change?"""
    return (before != after).reshape(before.shape[0], -1).any(1)


# --- gates --------------------------------------------------------------------------------------
def test_gates_multiply_op_outputs_and_unknown_candidates_run_ungated(tiny_space, mnist1d):
    a, b = tiny_space.parse(A), tiny_space.parse(B)
    tr, hat = hat_trainer(tiny_space, mnist1d, train_samples=128)
    run(tr, a, 0)
    net = tr.supernet
    op = hat._ops[0]  # stages.0.0.edges.0->1.conv_5: on both A's and B's paths
    module = dict(net.named_modules())[op.name]
    seen: dict[str, torch.Tensor] = {}
    handles = [module.register_forward_pre_hook(lambda m, args: seen.update(x=args[0])),
               module.register_forward_hook(lambda m, args, out: seen.update(y=out))]  # runs after the gate
    x = mnist1d.val.tensors[0][:64]
    net.eval()
    try:
        for arch, mask in ((a, hat.mask_of(a)), (b, None)):
            with torch.no_grad(), net.use(arch):
                net(x)
                gated, ungated = seen["y"], module(seen["x"])  # outside a supernet forward: no gate
            expected = ungated if mask is None else ungated * mask[op.start: op.stop].view(1, -1, 1)
            assert torch.allclose(gated, expected, atol=1e-6), arch
    finally:
        for h in handles:
            h.remove()
    assert hat.mask_of(b) is None


def test_masks_are_near_binary_at_s_max_and_training_moves_them(tiny_space, mnist1d):
    a = tiny_space.parse(A)
    tr, hat = hat_trainer(tiny_space, mnist1d, options(c=2.0), train_samples=512)
    ctx = tr.context(a, 0)
    hat.before_candidate(ctx)
    initial = torch.sigmoid(hat.embeddings[hat._slots[a]] * hat.options.s_max)[on_path(hat, a)].clone()
    run(tr, a, 0)
    mask = hat.mask_of(a)
    assert mask is not None
    m = mask[on_path(hat, a)]
    assert ((m < 0.01) | (m > 0.99)).float().mean() > 0.95, m
    assert 0 < m.mean() < 1
    assert not torch.equal(m, initial)
    assert (hat.embeddings.abs() <= hat.options.thres_emb).all()
    assert torch.equal(hat.cum_mask, mask)  # the only protected candidate


def test_s_is_annealed_within_each_epoch(tiny_space, mnist1d):
    net = wpl_nas.build_supernet(tiny_space, mnist1d)
    hat = HATStrategy(net, HATOptions(s_max=400.0))
    assert hat.anneal(0, 10) == pytest.approx(1 / 400)
    assert hat.anneal(9, 10) == pytest.approx(400.0)
    assert hat.anneal(0, 1) == 400.0
    s = [hat.anneal(b, 10) for b in range(10)]
    assert s == sorted(s)


# --- protection -----------------------------------------------------------------------------------
@pytest.mark.parametrize("include_global", [False, True])
def test_protected_units_never_move_and_free_ones_do(include_global, tiny_space, mnist1d):
    """With momentum 0.9 and weight decay, the channels an earlier candidate attends to stay
    exactly as they were while an overlapping candidate trains; the others move."""
    a, b = tiny_space.parse(A), tiny_space.parse(B)
    tr, hat = hat_trainer(tiny_space, mnist1d, options(include_global), train_samples=256)
    tr.optimizer.param_groups[0]["weight_decay"] = 1e-2
    run(tr, a, 0)
    before = weights(tr.supernet)
    tr.train(b, trial_index=1)
    after = weights(tr.supernet)
    b_path = set(tr.supernet.parameter_names_of(b))
    protected = moved_free = 0
    for op in hat._ops:
        if op.params[0] not in b_path:
            continue
        cum = hat.cum_mask[op.start: op.stop]
        for name in op.params:
            moved = rows_moved(before[name], after[name])
            assert not moved[cum == 1.0].any(), name  # pinned exactly
            protected += int((cum == 1.0).sum())
            moved_free += int(moved[cum < 1e-3].sum())
    assert protected > 0 and moved_free > 0, (protected, moved_free)
    skeleton_moved = rows_moved(before["stem.0.weight"], after["stem.0.weight"])
    assert skeleton_moved.all() != include_global  # unprotected skeleton moves; protected rows do not


def test_gradients_of_protected_channels_are_masked_on_the_output_side(tiny_space, mnist1d):
    a, b = tiny_space.parse(A), tiny_space.parse(B)
    tr, hat = hat_trainer(tiny_space, mnist1d, train_samples=128)
    run(tr, a, 0)
    net = tr.supernet
    ctx = tr.context(b, 1)
    net.set_arch(b)
    net.train()
    hat.before_candidate(ctx)
    x, y = mnist1d.val.tensors[0][:32], mnist1d.val.tensors[1][:32]
    net.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    plain = {n: p.grad.clone() for n, p in ctx.params.items()}
    ctx.batch = (x, y)
    hat.after_backward(ctx)
    checked = 0
    for op in hat._ops:
        if op.params[0] not in ctx.params:
            continue
        keep = 1.0 - hat.cum_mask[op.start: op.stop]
        for name in op.params:
            g = ctx.params[name].grad
            assert torch.allclose(g, plain[name] * keep.view(-1, *([1] * (g.dim() - 1)))), name
            checked += 1
    assert checked
    for name in ctx.params:  # the skeleton is not gated by default: untouched
        if ".edges." not in name:
            assert torch.equal(ctx.params[name].grad, plain[name]), name


def test_embedding_gradient_is_the_compensated_gradient_of_loss_plus_regulariser(tiny_space, mnist1d):
    a, b = tiny_space.parse(A), tiny_space.parse(B)
    c = 0.75
    tr, hat = hat_trainer(tiny_space, mnist1d, options(c=c), train_samples=128)
    run(tr, a, 0)
    net = tr.supernet
    ctx = tr.context(b, 1)
    ctx.steps_per_epoch, ctx.step = 5, 0  # the first batch of an epoch: s = 1/s_max
    net.set_arch(b)
    net.train()
    hat.before_candidate(ctx)
    e = hat.current_embedding
    assert e is not None and e.requires_grad
    x, y = mnist1d.val.tensors[0][:32], mnist1d.val.tensors[1][:32]
    s, s_max = 1 / hat.options.s_max, hat.options.s_max

    torch.nn.functional.cross_entropy(net(x), y).backward()
    ctx.batch = (x, y)
    hat.after_backward(ctx)
    injected = e.grad.clone()
    penalty_weights = (1 - hat.cum_mask) * hat._path_units(b)

    # Reference: autograd of CE + c·R with R = Σ a(1 − a_cum)/Σ(1 − a_cum) on B's path, then compensation.
    e.grad = None
    net.zero_grad(set_to_none=True)
    a_now = torch.sigmoid(s * e)
    reg = (a_now * penalty_weights).sum() / penalty_weights.sum()
    (torch.nn.functional.cross_entropy(net(x), y) + c * reg).backward()
    with torch.no_grad():
        ref = e.grad * s_max * (torch.cosh(torch.clamp(s * e, -50, 50)) + 1) / (s * (torch.cosh(e) + 1))
    assert torch.allclose(injected, ref, rtol=1e-4, atol=1e-6)
    assert injected.abs().max() > 0
    assert hat.penalty(ctx) > 0  # c·R once a candidate is protected
    e.grad = None


@pytest.mark.parametrize("seed", [0, 1])
def test_larger_c_gives_sparser_masks(seed, tiny_space, mnist1d):
    a = tiny_space.parse(A)
    used = {}
    for c in (0.0, 4.0):
        tr, hat = hat_trainer(tiny_space, mnist1d, options(c=c), train_samples=512, seed=seed)
        run(tr, a, 0)
        mask = hat.mask_of(a)
        assert mask is not None
        used[c] = mask[on_path(hat, a)].mean().item()
    assert used[4.0] < used[0.0] - 0.05, used


def test_first_candidate_reports_no_penalty(tiny_space, mnist1d):
    tr, _ = hat_trainer(tiny_space, mnist1d, train_samples=128)
    assert tr.train(tiny_space.parse(A), trial_index=0).penalty == 0.0


# --- the protected set -------------------------------------------------------------------------------
def candidates(space: wpl_nas.SearchSpace, n: int) -> list[wpl_nas.Architecture]:
    """``n`` distinct architectures with a convolution on every path."""
    found = (a for a in space.enumerate() if sum(op == "conv_5" for _, _, op in space.active_edges(a)) >= 2)
    return list(itertools.islice(found, n))


def test_protected_set_stays_bounded_and_releasing_frees_units(tiny_space, mnist1d):
    tr, hat = hat_trainer(tiny_space, mnist1d, options(protect=2), train_samples=128)
    archs = candidates(tiny_space, 5)
    for i, arch in enumerate(archs):  # rising scores: each newcomer releases the oldest
        run(tr, arch, i, score=0.1 * (i + 1))
        assert len(hat.protected) <= 2
        assert len(hat._slots) <= 2
    assert hat.embeddings.shape[0] == 3  # protect + 1 rows, whatever the number of candidates
    assert hat.protected.members == archs[-2:]
    for arch in archs[:-2]:
        assert hat.mask_of(arch) is None  # released: runs ungated
    assert not hat.protected.offer(archs[0], 0.0)[0]  # worse than both members

    keep, gone = archs[-1], archs[-2]
    mask_keep, mask_gone = hat.mask_of(keep), hat.mask_of(gone)
    assert torch.equal(hat.cum_mask, torch.maximum(mask_keep, mask_gone))
    assert hat.release(gone)
    assert not hat.release(gone)
    assert torch.equal(hat.cum_mask, mask_keep)
    freed = (mask_gone > 0.5) & (mask_keep < 0.5)
    assert freed.any() and (hat.cum_mask[freed] < 0.5).all()
    assert hat.mask_of(gone) is None


def test_a_candidate_not_admitted_keeps_no_embedding(tiny_space, mnist1d):
    tr, hat = hat_trainer(tiny_space, mnist1d, options(protect=1), train_samples=128)
    a, b = candidates(tiny_space, 2)
    run(tr, a, 0, score=0.9)
    cum = hat.cum_mask.clone()
    run(tr, b, 1, score=0.1)
    assert hat.protected.members == [a]
    assert hat.mask_of(b) is None
    assert torch.equal(hat.cum_mask, cum)


def test_rejects_bad_options(tiny_space, mnist1d):
    net = wpl_nas.build_supernet(tiny_space, mnist1d)
    with pytest.raises(wpl_nas.ConfigError, match="protect"):
        HATStrategy(net, HATOptions(protect=0))
    with pytest.raises(wpl_nas.ConfigError, match="s_max"):
        HATStrategy(net, HATOptions(s_max=0.0))


# --- state ----------------------------------------------------------------------------------------
def test_state_round_trips_and_a_resumed_run_matches(tiny_space, mnist1d):
    archs = candidates(tiny_space, 4)
    opts = options(protect=2)
    tr, hat = hat_trainer(tiny_space, mnist1d, opts, train_samples=128, seed=5)
    for i, arch in enumerate(archs[:3]):
        run(tr, arch, i, score=[0.5, 0.7, 0.6][i])
    assert hat.protected.members == archs[1:3]
    state = copy.deepcopy(hat.state_dict())
    net_state = weights(tr.supernet)
    opt_state = copy.deepcopy(tr.optimizer.state_dict())
    scores = [tr.score(a) for a in archs[:3]]

    # A resumed run: a fresh supernet, strategy and optimiser loaded from the checkpoint.
    resumed, fresh = hat_trainer(tiny_space, mnist1d, opts, train_samples=128, seed=5)
    resumed.supernet.load_state_dict(net_state)
    fresh.load_state_dict(state)
    resumed.optimizer.load_state_dict(opt_state)
    restored = fresh.state_dict()
    assert state.keys() == restored.keys()
    for k, v in state.items():
        assert torch.equal(v, restored[k]), k
    assert fresh.protected.members == hat.protected.members
    assert [fresh.protected.score(a) for a in archs[1:3]] == [0.7, 0.6]
    assert [resumed.score(a) for a in archs[:3]] == scores  # same gates (archs[0] ungated in both)

    for t in (tr, resumed):
        run(t, archs[3], 3, score=0.8)
    for k, v in weights(tr.supernet).items():
        assert torch.equal(v, weights(resumed.supernet)[k]), k
    for k, v in hat.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_a_second_strategy_on_the_same_supernet_takes_the_gates_over(tiny_space, mnist1d):
    a = tiny_space.parse(A)
    tr, hat = hat_trainer(tiny_space, mnist1d, train_samples=128)
    run(tr, a, 0)
    gated = tr.score(a)
    other = HATStrategy(tr.supernet, options())  # hooks are not registered twice: it simply owns them now
    assert other.mask_of(a) is None and tr.score(a) != gated  # `other` has no embedding for A: ungated
    other.load_state_dict(hat.state_dict())
    assert tr.score(a) == gated
    hat.attach(tr.supernet)
    assert tr.score(a) == gated


def test_copies_of_the_supernet_stay_gated_and_pickles_load_ungated(tiny_space, mnist1d):
    a = tiny_space.parse(A)
    tr, _ = hat_trainer(tiny_space, mnist1d, train_samples=128)
    run(tr, a, 0)
    x = mnist1d.val.tensors[0][:64]

    def logits(net: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad(), net.use(a):
            return net(x)

    assert torch.equal(logits(copy.deepcopy(tr.supernet)), logits(tr.supernet))
    buffer = io.BytesIO()
    torch.save(tr.supernet, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert not torch.allclose(logits(loaded), logits(tr.supernet))  # no strategy attached
    attached = HATStrategy(loaded, options())  # the gates hold it weakly: keep a reference
    attached.load_state_dict(tr.strategy.state_dict())
    assert torch.equal(logits(loaded), logits(tr.supernet))


@pytest.mark.parametrize("include_global", [False, True])
def test_seeded_runs_repeat(include_global, tiny_space, mnist1d):
    archs = candidates(tiny_space, 3)
    results = []
    for _ in range(2):
        tr, hat = hat_trainer(tiny_space, mnist1d, options(include_global, protect=1), train_samples=128, seed=2)
        for i, arch in enumerate(archs):
            run(tr, arch, i)
        results.append((weights(tr.supernet), hat.state_dict()))
    for first, second in zip(results[0], results[1], strict=True):
        for k, v in first.items():
            assert torch.equal(v, second[k]), k


# --- retention ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_hat_with_the_skeleton_protected_retains_more_than_naive(seed, tiny_space, mnist1d):
    """The two-model experiment of test_wpl_retains_more_than_naive. Only with the stem and the
    reductions gated too (``include_global``): with the cells alone, B retrains the skeleton and
    A drops about as much as under naive (more on seed 0); see the module docstring of hat.py."""
    a, b = tiny_space.parse(A), tiny_space.parse(B)
    drops = {}
    for name in ("naive", "hat"):
        tr = make_trainer(tiny_space, mnist1d, name, options=options(True), epochs=2, train_samples=3200,
                          seed=seed)
        result = tr.train(a, trial_index=0)
        tr.consolidate(a, trial_index=0, score=result.score)
        before = tr.score(a)
        tr.train(b, trial_index=1)
        drops[name] = before - tr.score(a)
    assert drops["naive"] > 0.05, drops  # the scenario does forget without protection
    assert drops["hat"] < drops["naive"] - 0.05, drops

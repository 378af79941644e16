"""The quadratic-penalty family: importance estimators, folds, and each member's own semantics."""

from __future__ import annotations

import pytest
import torch
from conftest import make_trainer

import wpl_nas
from wpl_nas.strategies import (
    STRATEGIES,
    ANPyCOptions,
    ANPyCStrategy,
    EWCStrategy,
    MASStrategy,
    OnlineEWCOptions,
    OnlineEWCStrategy,
    QuadraticStrategy,
    SIOptions,
    SIStrategy,
    create_strategy,
    resolve_strategy,
)
from wpl_nas.strategies.importance import (
    cross_entropy,
    mas_importance,
    per_sample_grads,
    per_sample_grads_loop,
    squared_output_norm,
)

A = "|conv_5~0|+|conv_5~0|conv_5~1|+|none~0|skip_connect~1|conv_5~2|"
B = "|conv_5~0|+|skip_connect~0|conv_5~1|+|conv_5~0|none~1|conv_5~2|"
QUADRATIC = [n for n in STRATEGIES.names() if issubclass(STRATEGIES.get(n), QuadraticStrategy)]


def batches(data: wpl_nas.DataBundle, n: int = 2, size: int = 16):
    x, y = data.val.tensors  # type: ignore[attr-defined]
    return lambda batch_size, num_batches: [(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size])
                                            for i in range(n)]


def consolidated(space, data, name, options=None, arch=A):
    tr = make_trainer(space, data, name, options=options, train_samples=256)
    a = space.parse(arch)
    result = tr.train(a, trial_index=0)
    tr.consolidate(a, trial_index=0, score=result.score)
    return tr, tr.strategy, a


@pytest.mark.parametrize("name", QUADRATIC)
def test_every_quadratic_strategy_has_the_options_its_base_reads(name):
    options = STRATEGIES.get(name).Options
    assert options is not None
    fields = {f.name: f for f in options.option_fields()}
    assert fields["form"].metadata["choices"] == ("proximal", "gradient") and "include_global" in fields
    assert len(options.resumable) == 1 and options.resumable[0] in options.non_negative  # its strength


@pytest.mark.parametrize("loss", [cross_entropy, squared_output_norm])
def test_vectorised_per_sample_gradients_equal_the_loop(loss, tiny_space, mnist1d):
    net = wpl_nas.build_supernet(tiny_space, mnist1d, seed=1)
    a = tiny_space.parse(A)  # has a dead branch: its tensors get zero gradients in both
    net.set_arch(a)
    names = net.parameter_names_of(a)
    x, y = (t[:6] for t in mnist1d.val.tensors)  # type: ignore[attr-defined]
    fast = per_sample_grads(net, names, x, y, loss)
    slow = per_sample_grads_loop(net, names, x, y, loss)
    for name, f, s in zip(names, fast, slow, strict=True):
        assert f.shape == (6, *dict(net.named_parameters())[name].shape)
        assert torch.allclose(f, s, atol=1e-5, rtol=1e-4), name
    assert any(f.abs().sum() > 0 for f in fast)


@pytest.mark.parametrize("name", QUADRATIC)
def test_importance_covers_exactly_the_candidate_path(name, tiny_space, mnist1d):
    tr, strategy, a = consolidated(tiny_space, mnist1d, name)
    assert isinstance(strategy, QuadraticStrategy)
    on_path = set(tr.supernet.parameter_names_of(a))
    for pname, _ in tr.supernet.named_parameters():
        omega = strategy.importance(pname)
        assert torch.isfinite(omega).all() and (omega >= 0).all(), pname
        if pname not in on_path:
            assert not omega.any(), pname
    assert any(strategy.importance(n).any() for n in on_path)


def test_ewc_merged_penalty_equals_the_sum_of_per_candidate_penalties(tiny_space, mnist1d, monkeypatch):
    """Σ_k F_k(θ−θ*_k)² and the merged Ω(θ−θ̄)² have the same gradient everywhere."""
    tr = make_trainer(tiny_space, mnist1d, "ewc", train_samples=128)
    ewc = tr.strategy
    assert isinstance(ewc, EWCStrategy)
    a = tiny_space.parse(A)
    gen = torch.Generator().manual_seed(0)
    recorded = []
    for k in range(3):
        fishers = {n: torch.rand(p.shape, generator=gen) * (k + 1) for n, p in tr.supernet.parameters_of(a).items()}
        for p in tr.supernet.parameters_of(a).values():  # a different anchor for every candidate
            with torch.no_grad():
                p.add_(torch.randn(p.shape, generator=gen))
        monkeypatch.setattr(ewc, "estimate", lambda ctx, names, held_out, f=fishers: [f[n] for n in names])
        tr.consolidate(a, trial_index=k)
        recorded.append({n: (fishers[n], p.detach().clone()) for n, p in tr.supernet.parameters_of(a).items()})
    theta = {n: torch.randn(p.shape, generator=gen) for n, p in tr.supernet.parameters_of(a).items()}
    for n in theta:
        separate = sum(f * (theta[n] - anchor) for f, anchor in (r[n] for r in recorded))
        merged = ewc.importance(n) * (theta[n] - ewc.anchor_of(n))
        assert torch.allclose(separate, merged, atol=1e-4, rtol=1e-4), n


def test_online_ewc_decays_the_running_fisher(tiny_space, mnist1d, monkeypatch):
    tr = make_trainer(tiny_space, mnist1d, "online-ewc", options=OnlineEWCOptions(gamma=0.5), train_samples=128)
    strategy = tr.strategy
    assert isinstance(strategy, OnlineEWCStrategy)
    a = tiny_space.parse(A)
    name = tr.supernet.parameter_names_of(a)[0]
    for value in (4.0, 2.0):
        monkeypatch.setattr(strategy, "estimate", lambda ctx, names, held_out, v=value: [
            torch.full_like(ctx.params[n], v) for n in names])
        tr.consolidate(a, trial_index=0)
    assert torch.allclose(strategy.importance(name), torch.full_like(strategy.importance(name), 0.5 * 4.0 + 2.0))
    assert torch.equal(strategy.anchor_of(name), tr.supernet.get_parameter(name).detach())


def test_si_importance_comes_from_the_path_integral(tiny_space, mnist1d):
    tr, si, a = consolidated(tiny_space, mnist1d, "si", options=SIOptions(xi=0.1))
    assert isinstance(si, SIStrategy)
    conv = [n for n in tr.supernet.parameter_names_of(a) if n.endswith("conv_5.1.weight")]
    assert any(si.importance(n).sum() > 0 for n in conv)
    # A candidate consolidated without training has no path integral: nothing is added.
    before = si.omega.clone()
    b = tiny_space.parse(B)
    si.before_candidate(tr.context(b, 1))
    tr.consolidate(b, trial_index=1)
    assert torch.equal(si.omega, before)


def test_mas_needs_no_labels(tiny_space, mnist1d):
    net = wpl_nas.build_supernet(tiny_space, mnist1d, seed=2)
    a = tiny_space.parse(A)
    net.set_arch(a)
    names = net.parameter_names_of(a)
    x, y = (t[:32] for t in mnist1d.val.tensors)  # type: ignore[attr-defined]
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    for per_sample in (True, False):
        one = mas_importance(net, names, lambda bs, n: [(x, y)], batch_size=32, batches=1, per_sample=per_sample)
        two = mas_importance(net, names, lambda bs, n: [(x, shuffled)], batch_size=32, batches=1,
                             per_sample=per_sample)
        for u, v in zip(one, two, strict=True):
            assert torch.equal(u, v)
    assert isinstance(create_strategy("mas", net), MASStrategy)


def test_anpyc_without_pruning_has_no_effect_before_consolidation(tiny_space, mnist1d):
    a = tiny_space.parse(A)
    anpyc = make_trainer(tiny_space, mnist1d, "anpyc", options=ANPyCOptions(prune=0.0), train_samples=256)
    plain = make_trainer(tiny_space, mnist1d, "naive", train_samples=256)
    assert not anpyc.strategy.acts_on_first_candidate
    assert anpyc.train(a, trial_index=0).loss == plain.train(a, trial_index=0).loss
    for (k, u), v in zip(anpyc.supernet.state_dict().items(), plain.supernet.state_dict().values(), strict=True):
        assert torch.equal(u, v), k


def test_anpyc_prunes_free_unimportant_weights_on_its_schedule(tiny_space, mnist1d):
    options = ANPyCOptions(prune=0.5, prune_decay=0.8, prune_min=0.3)
    probe = ANPyCStrategy(wpl_nas.build_supernet(tiny_space, mnist1d), options)
    assert [round(probe.prune_fraction(i), 3) for i in range(4)] == [0.5, 0.4, 0.32, 0.0]
    tr, anpyc, a = consolidated(tiny_space, mnist1d, "anpyc", options=options)
    assert isinstance(anpyc, ANPyCStrategy)
    convs = {n: p for n, p in tr.supernet.parameters_of(a).items() if ".edges." in n and p.dim() > 1}
    live = [n for n in convs if anpyc.importance(n).any() or (convs[n] == 0).any()]
    assert live
    for n in live:  # at least half of each (entirely free) tensor is zero, with no importance left
        zero = convs[n] == 0
        assert zero.float().mean() >= 0.5 - 1e-6, n
        assert not anpyc.importance(n)[zero].any(), n
    for n, p in tr.supernet.parameters_of(a).items():
        if ".edges." not in n:
            assert (p != 0).any(), n  # the skeleton is never pruned
    # The second candidate prunes only weights that A does not protect.
    protected = {n: anpyc.importance(n) > 0 for n in convs}
    kept = {n: convs[n].detach().clone() for n in convs}
    b = tiny_space.parse(B)
    tr.train(b, trial_index=1)
    tr.consolidate(b, trial_index=1)
    for n, mask in protected.items():
        param = tr.supernet.get_parameter(n)
        newly_zero = (param == 0) & (kept[n] != 0)
        assert not (newly_zero & mask).any(), n


_DROPS: dict[str, float] = {}


def drop_of_a(space, data, strategy: str) -> float:
    """Two-model scenario in miniature: A, then B sharing some of A's ops; A's accuracy drop."""
    if strategy not in _DROPS:
        a, b = space.parse(A), space.parse(B)
        tr = make_trainer(space, data, strategy, epochs=2, train_samples=3200, seed=0)
        result = tr.train(a, trial_index=0)
        tr.consolidate(a, trial_index=0, score=result.score)
        before = tr.score(a)
        tr.train(b, trial_index=1)
        _DROPS[strategy] = before - tr.score(a)
    return _DROPS[strategy]


@pytest.mark.parametrize("name", ["ewc", "online-ewc", "mas"])  # wpl: test_strategies.py, over two seeds
def test_strategy_retains_more_than_naive(name, tiny_space, mnist1d):
    naive = drop_of_a(tiny_space, mnist1d, "naive")
    assert naive > 0.05, naive
    assert drop_of_a(tiny_space, mnist1d, name) < naive - 0.05, (name, naive)


def test_two_penalties_do_not_combine_and_other_kinds_do(tiny_space, mnist1d):
    with pytest.raises(wpl_nas.ConfigError, match="both quadratic"):
        resolve_strategy("wpl+ewc")
    with pytest.raises(wpl_nas.ConfigError, match="naive"):
        resolve_strategy("naive+wpl")
    with pytest.raises(wpl_nas.ConfigError, match="at most two"):
        resolve_strategy("wpl+ewc+mas")
    with pytest.raises(wpl_nas.ConfigError, match="valid choices"):
        resolve_strategy("wpl+ewk")

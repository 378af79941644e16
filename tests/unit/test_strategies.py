"""Strategies: the contract every registered strategy keeps, and WPL's own semantics."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from conftest import make_trainer

import wpl_nas
from wpl_nas.configs import Options, section_name
from wpl_nas.strategies import STRATEGIES, SyntheticOptions, WPLOptions, WPLStrategy

A = "|conv_5~0|+|conv_5~0|conv_5~1|+|none~0|skip_connect~1|conv_5~2|"
B = "|conv_5~0|+|skip_connect~0|conv_5~1|+|conv_5~0|none~1|conv_5~2|"


def archs(space: wpl_nas.SearchSpace) -> tuple[wpl_nas.Architecture, wpl_nas.Architecture]:
    return space.parse(A), space.parse(B)


def weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _combinations() -> list[str]:
    """Compositions in the contract suite: those whose parts are registered."""
    wanted = [("wpl", "distill"), ("hat", "distill"), ("ewc", "synthetic"), ("hat", "wpl")]
    return [f"{a}+{b}" for a, b in wanted if a in STRATEGIES and b in STRATEGIES]


#: Every registered strategy and the compositions the docs advertise.
CONTRACT = STRATEGIES.names() + _combinations()
#: Options for the contract runs: defaults, except a cheaper meta-learning for synthetic rehearsal.
CHEAP = wpl_nas.SearchConfig().replace(synthetic=SyntheticOptions(outer_steps=2, inner_steps=1))


# --- the contract, parametrised over the registry ------------------------------------------
@pytest.mark.parametrize("name", CONTRACT)
def test_no_effect_before_anything_is_consolidated(name, tiny_space, mnist1d):
    a, _ = archs(tiny_space)
    with_strategy = make_trainer(tiny_space, mnist1d, name, options=CHEAP, train_samples=256)
    plain = make_trainer(tiny_space, mnist1d, "naive", train_samples=256)
    start = weights(with_strategy.supernet)
    r1 = with_strategy.train(a, trial_index=0)
    r2 = plain.train(a, trial_index=0)
    if with_strategy.strategy.changes_forward or with_strategy.strategy.acts_on_first_candidate:
        # By design the strategy shapes the first candidate too (HAT's gates, ANPyC's pruning),
        # but nothing is protected yet: every tensor on the path trains.
        after = weights(with_strategy.supernet)
        for k in with_strategy.supernet.parameter_names_of(a):
            assert not torch.equal(start[k], after[k]), k
        return
    assert r1.penalty == 0.0
    assert r1.loss == r2.loss
    for k, v in weights(with_strategy.supernet).items():
        assert torch.equal(v, weights(plain.supernet)[k]), k


@pytest.mark.parametrize("name", CONTRACT)
def test_parameters_off_the_path_never_move(name, tiny_space, mnist1d):
    a, b = archs(tiny_space)
    tr = make_trainer(tiny_space, mnist1d, name, options=CHEAP, train_samples=256)
    tr.train(a, trial_index=0)
    tr.consolidate(a, trial_index=0)
    before = weights(tr.supernet)
    tr.train(b, trial_index=1)
    on_path = set(tr.supernet.parameter_names_of(b))
    after = weights(tr.supernet)
    off = [k for k in before if k not in on_path]
    assert off, "the test needs parameters off B's path"
    for k in off:
        assert torch.equal(before[k], after[k]), k


@pytest.mark.parametrize("name", CONTRACT)
def test_a_cell_of_parameter_free_ops_is_trained_and_consolidated(name, tiny_space, mnist1d):
    # Such candidates are common in a search (skip/none everywhere, or a cell whose output node has
    # no input, so nothing before the head gets a gradient); a strategy then may have no tensor to
    # estimate, prune or mask (found by the memory benchmark).
    a, _ = archs(tiny_space)
    bare = tiny_space.parse("|skip_connect~0|+|none~0|skip_connect~1|+|skip_connect~0|none~1|skip_connect~2|")
    dead = tiny_space.parse("|none~0|+|none~0|conv_5~1|+|none~0|none~1|none~2|")
    tr = make_trainer(tiny_space, mnist1d, name, options=CHEAP, train_samples=256)
    for i, arch in enumerate((a, bare, a, dead, a)):
        result = tr.train(arch, trial_index=i)
        tr.consolidate(arch, trial_index=i, score=result.score)
        assert result.loss == result.loss, f"NaN loss on {arch}"
    for k, v in tr.strategy.state_dict().items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            assert torch.isfinite(v).all(), k


@pytest.mark.parametrize("name", CONTRACT)
def test_state_round_trips_exactly_and_has_no_nan(name, tiny_space, mnist1d):
    a, b = archs(tiny_space)
    tr = make_trainer(tiny_space, mnist1d, name, options=CHEAP, train_samples=256)
    for i, arch in enumerate((a, b)):
        result = tr.train(arch, trial_index=i)
        tr.consolidate(arch, trial_index=i, score=result.score)
    state = copy.deepcopy(tr.strategy.state_dict())
    fresh = wpl_nas.create_strategy(name, tr.supernet)
    fresh.load_state_dict(state)
    restored = fresh.state_dict()
    assert state.keys() == restored.keys()
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):  # extra state (e.g. a protected set's members)
            assert v == restored[k], k
            continue
        assert torch.equal(v, restored[k]), k
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k


@pytest.mark.parametrize("name", CONTRACT)
def test_resuming_mid_search_equals_an_uninterrupted_run(name, tiny_space, mnist1d):
    """Checkpoint after the first candidate (supernet, strategy, optimiser), restore into fresh
    objects, train the second: the same weights and strategy state as without the break."""
    a, b = archs(tiny_space)
    whole = make_trainer(tiny_space, mnist1d, name, options=CHEAP, train_samples=256, seed=5)
    first = make_trainer(tiny_space, mnist1d, name, options=CHEAP, train_samples=256, seed=5)
    for tr in (whole, first):
        result = tr.train(a, trial_index=0)
        tr.consolidate(a, trial_index=0, score=result.score)
    saved = copy.deepcopy({"net": first.supernet.state_dict(), "strategy": first.strategy.state_dict(),
                           "opt": first.optimizer.state_dict()})
    resumed = make_trainer(tiny_space, mnist1d, name, options=CHEAP, train_samples=256, seed=5)
    resumed.supernet.load_state_dict(saved["net"])
    resumed.strategy.load_state_dict(saved["strategy"])
    resumed.optimizer.load_state_dict(saved["opt"])
    for tr in (whole, resumed):
        result = tr.train(b, trial_index=1)
        tr.consolidate(b, trial_index=1, score=result.score)
    for k, v in weights(whole.supernet).items():
        assert torch.equal(v, weights(resumed.supernet)[k]), k
    for k, v in whole.strategy.state_dict().items():
        other = resumed.strategy.state_dict()[k]
        assert torch.equal(v, other) if isinstance(v, torch.Tensor) else v == other, k


@pytest.mark.parametrize("name", CONTRACT)
def test_seeded_runs_are_deterministic(name, tiny_space, mnist1d):
    a, b = archs(tiny_space)
    results = []
    for _ in range(2):
        tr = make_trainer(tiny_space, mnist1d, name, options=CHEAP, train_samples=256, seed=3)
        tr.train(a, trial_index=0)
        tr.consolidate(a, trial_index=0)
        tr.train(b, trial_index=1)
        results.append((weights(tr.supernet), tr.strategy.state_dict()))
    for k, v in results[0][0].items():
        assert torch.equal(v, results[1][0][k]), k
    for k, v in results[0][1].items():
        assert torch.equal(v, results[1][1][k]), k


# --- every strategy's options: built from the registry, one section and one flag each -----------------
WITH_OPTIONS = [n for n in STRATEGIES.names() if STRATEGIES.get(n).Options is not None]


def _other_values(options: type[Options]) -> dict[str, Any]:
    """A value other than the default for every option (not necessarily a valid one: this tests the plumbing)."""
    defaults, values = options(), {}
    for f in options.option_fields():
        default, choices = getattr(defaults, f.name), f.metadata.get("choices")
        values[f.name] = (choices[-1] if choices else not default if isinstance(default, bool)
                          else default * 2 + 1 if isinstance(default, (int, float)) else f"{default}-x")
    return values


def _flags(name: str, values: dict[str, Any]) -> list[str]:
    args = []
    for key, value in values.items():
        flag = f"{name}-{key.replace('_', '-')}"
        args += ([f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)])
    return args


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_builds_with_defaults_from_none_its_options_a_config_or_a_mapping(name, tiny_space, mnist1d):
    net = wpl_nas.build_supernet(tiny_space, mnist1d, seed=0)
    options = STRATEGIES.get(name).Options
    given = [None, wpl_nas.SearchConfig(), wpl_nas.LabConfig().strategy_options, *([options()] if options else [])]
    built = [wpl_nas.create_strategy(name, net, g) for g in given]
    assert all(type(s) is STRATEGIES.get(name) and s.options == built[0].options for s in built)
    assert (built[0].options is None) == (options is None)


@pytest.mark.parametrize("name", WITH_OPTIONS)
def test_its_options_round_trip_through_yaml_and_the_command_line(name, tmp_path):
    from wpl_nas.cli import _overrides, cli

    section, options = section_name(name), STRATEGIES.get(name).Options
    values = _other_values(options)
    expected = wpl_nas.SearchConfig().replace(**{section: values})
    assert expected.strategy_options[name] == options(**values) != options()
    path = tmp_path / "c.yaml"
    expected.dump(path)
    assert wpl_nas.load_config(path) == expected
    for command, kind in (("search", wpl_nas.SearchConfig), ("forgetting", wpl_nas.LabConfig)):
        params = cli.commands[command].make_context(command, _flags(name, values)).params
        flags = {k: v for k, v in params.items() if k != "progress"}  # the one flag that is not an option
        assert kind().replace(**_overrides(kind, flags)).sections[section] == options(**values), command


@pytest.mark.parametrize("name", WITH_OPTIONS)
def test_its_options_name_their_section_in_messages(name):
    options = STRATEGIES.get(name).Options
    assert options.section == section_name(name)
    assert options().validate() == options() and options.resumable  # a default is valid; its strength resumes


def test_another_strategy_s_options_are_refused(tiny_space, mnist1d):
    net = wpl_nas.build_supernet(tiny_space, mnist1d, seed=0)
    with pytest.raises(TypeError, match="the options of 'wpl' must be WPLOptions, but got SyntheticOptions"):
        wpl_nas.create_strategy("wpl", net, {"wpl": SyntheticOptions()})
    with pytest.raises(TypeError, match="belong to none of its parts"):
        wpl_nas.create_strategy("wpl", net, SyntheticOptions())
    both = wpl_nas.create_strategy("wpl+synthetic", net, SyntheticOptions(per_class=1))
    assert [type(p.options).__name__ for p in both.parts] == ["WPLOptions", "SyntheticOptions"]
    assert both.parts[1].options.per_class == 1


# --- WPL ---------------------------------------------------------------------------------------
def consolidated_wpl(tiny_space, mnist1d, **options) -> tuple[wpl_nas.CandidateTrainer, WPLStrategy]:
    a, _ = archs(tiny_space)
    tr = make_trainer(tiny_space, mnist1d, "wpl", options=WPLOptions(**options), train_samples=256)
    tr.train(a, trial_index=0)
    tr.consolidate(a, trial_index=0)
    assert isinstance(tr.strategy, WPLStrategy)
    return tr, tr.strategy


def test_wpl_importance_covers_exactly_the_consolidated_path(tiny_space, mnist1d):
    tr, wpl = consolidated_wpl(tiny_space, mnist1d)
    a, _ = archs(tiny_space)
    path = set(tr.supernet.parameter_names_of(a))
    for name, p in tr.supernet.named_parameters():
        omega, anchor = wpl.importance(name), wpl.anchor_of(name)
        if name in path:
            assert torch.equal(anchor, p.detach()), name
            assert (omega >= 0).all()
        else:
            assert not omega.any(), name
    assert sum(bool(wpl.importance(n).any()) for n in path) > len(path) // 2
    assert int(wpl.consolidated) == 1


def test_wpl_keeps_alpha_out_of_the_importance(tiny_space, mnist1d):
    _, small = consolidated_wpl(tiny_space, mnist1d, alpha=1.0)
    _, large = consolidated_wpl(tiny_space, mnist1d, alpha=1e6)
    assert torch.equal(small.omega, large.omega)


def test_wpl_gradient_form_equals_autograd_of_the_penalty_on_shared_weights_only(tiny_space, mnist1d):
    alpha = 50.0
    tr, wpl = consolidated_wpl(tiny_space, mnist1d, alpha=alpha, form="gradient")
    a, b = archs(tiny_space)
    net = tr.supernet
    with torch.no_grad():  # move B's weights away from the anchors so the penalty is non-zero
        for p in net.parameters_of(b).values():
            p.add_(0.01 * torch.randn_like(p))
    ctx = tr.context(b, trial_index=1)
    net.set_arch(b)
    x, y = mnist1d.val.tensors[0][:32], mnist1d.val.tensors[1][:32]

    net.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    plain = {n: p.grad.clone() for n, p in ctx.params.items()}
    wpl.before_candidate(ctx)
    wpl.after_backward(ctx)
    penalty = wpl.penalty(ctx)
    injected = {n: p.grad.clone() for n, p in ctx.params.items()}

    net.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    reference = sum(0.5 * alpha * (wpl.importance(n) * (p - wpl.anchor_of(n)) ** 2).sum()
                    for n, p in ctx.params.items())
    (loss + reference).backward()
    assert penalty == pytest.approx(reference.item(), rel=1e-4)
    a_path = set(net.parameter_names_of(a))
    shared = [n for n in ctx.params if n in a_path]
    private = [n for n in ctx.params if n not in a_path]
    assert shared and private
    for n, p in ctx.params.items():
        assert torch.allclose(injected[n], p.grad, rtol=1e-4, atol=1e-7), n
    for n in private:  # the new candidate's own weights move freely
        assert torch.equal(injected[n], plain[n]), n
    assert any(not torch.equal(injected[n], plain[n]) for n in shared)


@pytest.mark.parametrize("alpha", [1e4, 1e8])
def test_wpl_proximal_form_is_stable_for_huge_alpha(alpha, tiny_space, mnist1d):
    tr, wpl = consolidated_wpl(tiny_space, mnist1d, alpha=alpha, form="proximal")
    a, b = archs(tiny_space)
    result = tr.train(b, trial_index=1)
    assert torch.isfinite(torch.tensor([result.loss, result.penalty])).all()
    for p in tr.supernet.parameters():
        assert torch.isfinite(p).all()
    # Shared weights whose per-step pull coefficient lr·α·Ω is large stay pinned to their anchors.
    shared = [n for n in tr.supernet.parameter_names_of(b)
              if n in set(tr.supernet.parameter_names_of(a)) and ".edges." in n and n.endswith("1.weight")]
    assert shared
    params = dict(tr.supernet.named_parameters())
    for n in shared:
        moved = (params[n] - wpl.anchor_of(n)).abs()
        important = tr.optimizer.param_groups[0]["lr"] * alpha * wpl.importance(n) > 100
        if important.any():
            assert moved[important].max() < 1e-2, n


def test_wpl_gradient_form_diverges_where_the_proximal_form_does_not(tiny_space, mnist1d):
    # Documents why 'proximal' is the default: lr·α·max Ω far above 2 blows the explicit form up.
    _, b = archs(tiny_space)
    penalties = {}
    for form in ("gradient", "proximal"):
        tr, _ = consolidated_wpl(tiny_space, mnist1d, alpha=1e7, form=form)
        tr.grad_clip = 0.0
        penalties[form] = tr.train(b, trial_index=1).penalty
    assert not torch.isfinite(torch.tensor(penalties["gradient"])) or penalties["gradient"] > 1e6, penalties
    assert torch.isfinite(torch.tensor(penalties["proximal"])) and penalties["proximal"] < 1e3, penalties


@pytest.mark.parametrize("mode", ["sum", "decay", "max"])
def test_wpl_accumulation_modes(mode, tiny_space, mnist1d, monkeypatch):
    a, _ = archs(tiny_space)
    tr, wpl = consolidated_wpl(tiny_space, mnist1d, accumulate=mode, decay=0.5)
    first = wpl.omega.clone()
    # A second consolidation of A with a known Fisher of 0.5 everywhere on its path.
    monkeypatch.setattr(wpl, "estimate", lambda ctx, names, held_out: [torch.full_like(ctx.params[n], 0.5)
                                                                       for n in names])
    tr.consolidate(a, trial_index=1)
    path = torch.zeros_like(first, dtype=torch.bool)
    for name in tr.supernet.parameter_names_of(a):
        wpl.layout.view(path, name).fill_(True)
    expected = {"sum": first + 0.5, "decay": 0.5 * first + 0.5, "max": torch.clamp(first, min=0.5)}[mode]
    assert torch.allclose(wpl.omega[path], expected[path])
    assert torch.equal(wpl.omega[~path], first[~path])
    assert int(wpl.consolidated) == 2


def test_wpl_per_tensor_normalisation(tiny_space, mnist1d):
    tr, wpl = consolidated_wpl(tiny_space, mnist1d, normalize=True, normalize_norm=10.0)
    a, _ = archs(tiny_space)
    norms = [wpl.importance(n).norm().item() for n in tr.supernet.parameter_names_of(a)
             if wpl.importance(n).any()]
    assert norms and all(abs(n - 10.0) < 1e-3 for n in norms)


def test_wpl_skeleton_protection_switch(tiny_space, mnist1d):
    tr, wpl = consolidated_wpl(tiny_space, mnist1d, include_global=False)
    for name, _ in tr.supernet.named_parameters():
        if ".edges." not in name:
            assert not wpl.importance(name).any(), name


def test_wpl_start_trial_and_alpha_schedule(tiny_space, mnist1d):
    a, _ = archs(tiny_space)
    tr = make_trainer(tiny_space, mnist1d, "wpl", options=WPLOptions(start_trial=1), train_samples=128)
    tr.train(a, trial_index=0)
    tr.consolidate(a, trial_index=0)
    assert int(tr.strategy.consolidated) == 0 and not tr.strategy.omega.any()
    decaying = WPLStrategy(tr.supernet, WPLOptions(alpha=10.0, alpha_decay=4.0, alpha_decay_after=2))
    assert [decaying.strength(t) for t in range(6)] == [10.0, 10.0, 6.0, 2.0, 0.0, 0.0]


def test_wpl_rejects_bad_options(tiny_space, mnist1d):
    net = wpl_nas.build_supernet(tiny_space, mnist1d)
    with pytest.raises(wpl_nas.ConfigError, match="decay"):
        WPLStrategy(net, WPLOptions(decay=2.0))


@pytest.mark.parametrize("seed", [0, 1])
def test_wpl_retains_more_than_naive(seed, tiny_space, mnist1d):
    """The WPL paper's two-model experiment in miniature: A is trained, then B, which shares
    some of A's ops, is trained; A's accuracy drops less with WPL than without."""
    a, b = archs(tiny_space)
    drops = {}
    for name in ("naive", "wpl"):
        tr = make_trainer(tiny_space, mnist1d, name, options=CHEAP, epochs=2, train_samples=3200, seed=seed)
        tr.train(a, trial_index=0)
        tr.consolidate(a, trial_index=0)
        before = tr.score(a)
        tr.train(b, trial_index=1)
        drops[name] = before - tr.score(a)
    assert drops["naive"] > 0.02, drops  # the scenario does forget without protection
    assert drops["wpl"] < drops["naive"] - 0.02, drops


# --- WPL with a protected set (protect=K) ---------------------------------------------------------

C = "|skip_connect~0|+|conv_5~0|conv_5~1|+|conv_5~0|conv_5~1|none~2|"


def _protecting(tiny_space, mnist1d, k: int, scores: dict[str, float]) -> wpl_nas.CandidateTrainer:
    """A WPL trainer protecting the best ``k``, after training the candidates of ``scores`` in order
    (each consolidated with the given score, so the test decides who is best)."""
    tr = make_trainer(tiny_space, mnist1d, "wpl", options=wpl_nas.SearchConfig().replace(wpl=WPLOptions(protect=k)),
                      train_samples=256)
    for i, (arch, score) in enumerate(scores.items()):
        tr.train(tiny_space.parse(arch), trial_index=i)
        tr.consolidate(tiny_space.parse(arch), trial_index=i, score=score)
    return tr


def test_wpl_protected_set_pulls_towards_the_best_k_only(tiny_space, mnist1d):
    tr = _protecting(tiny_space, mnist1d, 2, {A: 0.5, B: 0.9, C: 0.7})
    strategy = tr.strategy
    assert isinstance(strategy, WPLStrategy) and strategy.protected is not None
    assert [str(a) for a in strategy.protected.members] == [B, C]  # A, the worst, was released
    rows = {key: i for i, key in enumerate(strategy._slots) if key is not None}
    assert set(rows) == {B, C}
    # Ω and θ* are rebuilt so that Ω ⊙ (θ − θ*) = Σ_k F_k ⊙ (θ − θ*_k): the sum of the members' own pulls.
    theta = torch.randn_like(strategy.omega)
    members = [(strategy.member_omega[i], strategy.member_anchor[i]) for i in rows.values()]
    expected = sum(f * (theta - anchor) for f, anchor in members)
    torch.testing.assert_close(strategy.omega * (theta - strategy.anchor), expected)
    # A's own weights (on its path, on no member's) pull no more.
    own = set(tr.supernet.parameters_of(tiny_space.parse(A))) - {
        n for arch in (B, C) for n in tr.supernet.parameters_of(tiny_space.parse(arch))}
    assert own and all(not strategy.importance(n).any() for n in own)
    assert all(strategy.importance(n).any() for n in tr.supernet.parameters_of(tiny_space.parse(B))
               if strategy.protectable(n) and "weight" in n)


def test_wpl_protected_set_round_trips_and_goes_on_identically(tiny_space, mnist1d):
    tr = _protecting(tiny_space, mnist1d, 2, {A: 0.5, B: 0.9})
    fresh = wpl_nas.create_strategy("wpl", tr.supernet, wpl_nas.SearchConfig().replace(wpl=WPLOptions(protect=2)))
    fresh.load_state_dict(copy.deepcopy(tr.strategy.state_dict()))
    assert [str(a) for a in fresh.protected.members] == [A, B] and fresh._slots == tr.strategy._slots
    original, state = tr.strategy, weights(tr.supernet)
    tr.consolidate(tiny_space.parse(C), trial_index=2, score=0.7)  # C displaces A
    tr.supernet.load_state_dict(state)
    tr.strategy = fresh
    tr.consolidate(tiny_space.parse(C), trial_index=2, score=0.7)  # the same, on the restored strategy
    assert [str(a) for a in fresh.protected.members] == [B, C]
    for name, value in original.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name


@pytest.mark.parametrize("seed", [0, 1])
def test_wpl_protecting_the_first_candidate_retains_more_than_naive(seed, tiny_space, mnist1d):
    """The two-model scenario with a protected set of one: A is protected, so B's training moves it less."""
    a, b = archs(tiny_space)
    drops = {}
    for name, options in (("naive", CHEAP), ("wpl", wpl_nas.SearchConfig().replace(wpl=WPLOptions(protect=1)))):
        tr = make_trainer(tiny_space, mnist1d, name, options=options, epochs=2, train_samples=3200, seed=seed)
        tr.train(a, trial_index=0)
        tr.consolidate(a, trial_index=0, score=0.9)
        before = tr.score(a)
        tr.train(b, trial_index=1)
        drops[name] = before - tr.score(a)
    assert drops["wpl"] < drops["naive"] - 0.02, drops


def test_wpl_protect_must_be_a_count(tiny_space, mnist1d):
    with pytest.raises(wpl_nas.ConfigError, match="protect"):
        WPLOptions(protect=-1).validate()

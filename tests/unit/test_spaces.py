"""Tests for ``wpl_nas.spaces``: the built-in spaces, architecture strings, Optuna suggestions,
live-path analysis and the validation of user-written space files."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from wpl_nas.errors import ConfigError
from wpl_nas.ops import OPS
from wpl_nas.spaces import Architecture, SearchSpace, builtin_spaces, edge_label, load_space

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NB201_EXAMPLES = [
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
    "|nor_conv_1x1~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|skip_connect~2|",
    "|avg_pool_3x3~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|none~0|skip_connect~1|nor_conv_3x3~2|",
]


@pytest.fixture(scope="module")
def nb201() -> SearchSpace:
    return load_space("nb201")


@pytest.fixture(scope="module")
def mnist1d() -> SearchSpace:
    return load_space("mnist1d")


def mnist_arch(**ops: str) -> Architecture:
    """An mnist1d architecture from keyword ops ``e01="conv_5"``; unspecified edges are ``none``."""
    edges = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    return Architecture.from_ops({(s, d): ops.get(f"e{s}{d}", "none") for s, d in edges})


# --- built-in spaces ----------------------------------------------------------------------
def test_builtin_spaces_are_listed_and_exist() -> None:
    spaces = builtin_spaces()
    assert {"mnist1d", "nb201"} <= set(spaces)
    for name, path in spaces.items():
        assert path.is_file()
        assert path.suffix == ".yaml"
        assert path.stem == name


def test_nb201_matches_the_benchmark(nb201: SearchSpace) -> None:
    assert nb201.name == "nb201"
    assert nb201.size == 15625  # 5 ops ** 6 edges, NAS-Bench-201's published count
    assert nb201.dims == 2
    assert nb201.num_nodes == 4
    assert nb201.output_node == 3
    assert nb201.edges == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    assert list(nb201.choices) == ["0->1", "0->2", "1->2", "0->3", "1->3", "2->3"]
    assert all(set(ops) == set(NB201_OPS) for ops in nb201.choices.values())
    assert [(st.channels, st.cells) for st in nb201.stages] == [(16, 5), (32, 5), (64, 5)]
    assert nb201.stem_channels == 16
    assert nb201.source == builtin_spaces()["nb201"]


def test_mnist1d_space_is_small_enough_to_enumerate(mnist1d: SearchSpace) -> None:
    assert mnist1d.dims == 1
    assert mnist1d.size <= 1000
    assert mnist1d.size == 3**6
    archs = list(mnist1d.enumerate())
    assert len(archs) == len(set(archs)) == mnist1d.size


def test_enumerate_is_complete_and_in_fixed_order(nb201: SearchSpace) -> None:
    first = list(nb201.enumerate())
    assert len(first) == len(set(first)) == nb201.size
    assert first == list(nb201.enumerate())


def test_load_space_unknown_name_lists_builtin_spaces() -> None:
    with pytest.raises(ConfigError) as info:
        load_space("nope")
    message = str(info.value)
    assert "'nope'" in message
    for name in builtin_spaces():
        assert name in message


def test_load_space_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_space(path)


# --- architecture strings ------------------------------------------------------------------
@pytest.mark.parametrize("text", NB201_EXAMPLES)
def test_benchmark_strings_round_trip(nb201: SearchSpace, text: str) -> None:
    arch = nb201.parse(text)
    assert str(arch) == text
    assert len(arch) == 6
    assert Architecture.parse(text) == arch


def test_parse_reads_ops_per_edge(nb201: SearchSpace) -> None:
    arch = nb201.parse(NB201_EXAMPLES[0])
    assert dict(arch) == {
        "0->1": "nor_conv_3x3",
        "0->2": "nor_conv_3x3",
        "1->2": "avg_pool_3x3",
        "0->3": "skip_connect",
        "1->3": "nor_conv_3x3",
        "2->3": "skip_connect",
    }
    assert arch.op(1, 2) == "avg_pool_3x3"
    assert arch["2->3"] == "skip_connect"
    assert edge_label(1, 2) in arch


def test_every_nb201_architecture_round_trips(nb201: SearchSpace) -> None:
    for arch in nb201.enumerate():
        assert nb201.parse(str(arch)) == arch


@pytest.mark.parametrize("name", ["nb201", "mnist1d"])
def test_sampled_architectures_round_trip_and_validate(name: str) -> None:
    space = load_space(name)
    for seed in range(50):
        arch = space.sample(random.Random(seed))
        assert space.validate(arch) is arch
        parsed = space.parse(str(arch))
        assert parsed == arch
        assert hash(parsed) == hash(arch)
    # Seeded sampling is reproducible and covers more than one architecture.
    assert space.sample(random.Random(3)) == space.sample(random.Random(3))
    assert len({space.sample(random.Random(seed)) for seed in range(50)}) > 10


def test_architecture_order_is_canonical() -> None:
    shuffled = Architecture(((1, 3, "a"), (0, 1, "b"), (0, 3, "c"), (0, 2, "d"), (2, 3, "e"), (1, 2, "f")))
    assert [(s, d) for s, d, _ in shuffled.edges] == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    assert list(shuffled) == ["0->1", "0->2", "1->2", "0->3", "1->3", "2->3"]
    assert shuffled == Architecture.from_ops({(s, d): op for s, d, op in reversed(shuffled.edges)})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "must look like"),
        ("nor_conv_3x3~0", "must look like"),
        ("|nor_conv_3x3~0|+", "must look like"),
        ("|nor_conv_3x3-0|+|none~0|none~1|+|none~0|none~1|none~2|", "nor_conv_3x3-0"),
        ("|nor_conv_3x3~a|+|none~0|none~1|+|none~0|none~1|none~2|", "nor_conv_3x3~a"),
        ("|~0|+|none~0|none~1|+|none~0|none~1|none~2|", "op~src"),
        ("||+|none~0|none~1|+|none~0|none~1|none~2|", "must look like"),
    ],
)
def test_malformed_strings_are_rejected(nb201: SearchSpace, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        nb201.parse(text)
    message = str(info.value)
    assert fragment in message
    assert "architecture string" in message


def test_op_not_in_space_is_rejected_with_the_choices(nb201: SearchSpace) -> None:
    text = "|conv_5~0|+|none~0|none~1|+|none~0|none~1|none~2|"
    with pytest.raises(ConfigError) as info:
        nb201.parse(text)
    message = str(info.value)
    assert "'conv_5'" in message
    assert "0->1" in message
    assert "nb201" in message
    for op in NB201_OPS:
        assert op in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        # Node 3's group is missing: three edges are absent.
        ("|none~0|+|none~0|none~1|", "missing edges"),
        # An edge 1 -> 1 that the cell does not have.
        ("|none~0|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "unexpected edges"),
        # Edge 0 -> 1 given twice with different ops.
        ("|nor_conv_3x3~0|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "more than once"),
    ],
)
def test_architectures_with_wrong_edges_are_rejected(nb201: SearchSpace, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        nb201.parse(text)
    assert fragment in str(info.value)


def test_mnist1d_strings_do_not_fit_nb201(nb201: SearchSpace, mnist1d: SearchSpace) -> None:
    text = str(mnist1d.validate(mnist_arch(e01="conv_5", e03="skip_connect")))  # conv_5 is not an nb201 op
    with pytest.raises(ConfigError, match="conv_5"):
        nb201.parse(text)


# --- Optuna --------------------------------------------------------------------------------
def test_suggest_asks_one_categorical_per_edge(nb201: SearchSpace) -> None:
    study = optuna.create_study()
    for _ in range(5):
        trial = study.ask()
        arch = nb201.suggest(trial)
        assert nb201.validate(arch) is arch
        assert set(trial.params) == set(nb201.choices)
        assert trial.params == dict(arch)
        for label, ops in nb201.choices.items():
            dist = trial.distributions[label]
            assert isinstance(dist, optuna.distributions.CategoricalDistribution)
            assert tuple(dist.choices) == tuple(ops)
            assert trial.params[label] in ops
        study.tell(trial, 0.0)


def test_suggest_follows_fixed_params(mnist1d: SearchSpace) -> None:
    wanted = mnist_arch(e01="conv_5", e13="skip_connect", e23="conv_5")
    study = optuna.create_study()
    study.enqueue_trial(dict(wanted))
    trial = study.ask()
    assert mnist1d.suggest(trial) == wanted


def test_grid_sampler_enumerates_distinct_architectures(mnist1d: SearchSpace) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = {label: list(ops) for label, ops in mnist1d.choices.items()}
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    seen: list[Architecture] = []

    def objective(trial: optuna.Trial) -> float:
        seen.append(mnist1d.validate(mnist1d.suggest(trial)))
        return 0.0

    study.optimize(objective, n_trials=40)
    assert len(seen) == 40
    assert len(set(seen)) == 40  # the grid never repeats a point before it is exhausted


# --- live paths -----------------------------------------------------------------------------
def test_active_edges_of_a_full_cell(mnist1d: SearchSpace) -> None:
    arch = mnist_arch(e01="conv_5", e02="skip_connect", e12="conv_5", e03="skip_connect", e13="conv_5",
                      e23="skip_connect")
    assert mnist1d.active_edges(arch) == list(arch.edges)


def test_active_edges_exclude_none(mnist1d: SearchSpace) -> None:
    arch = mnist_arch(e01="conv_5", e13="conv_5", e03="skip_connect")
    assert mnist1d.active_edges(arch) == [(0, 1, "conv_5"), (0, 3, "skip_connect"), (1, 3, "conv_5")]


def test_active_edges_exclude_dead_edges(mnist1d: SearchSpace) -> None:
    # Nodes 1 and 2 only feed the output through `none`: every edge into them is dead.
    arch = mnist_arch(e01="conv_5", e02="conv_5", e12="skip_connect", e03="skip_connect")
    assert mnist1d.active_edges(arch) == [(0, 3, "skip_connect")]
    # Node 2 is dead (2 -> 3 is none) but node 1 is live (1 -> 3).
    arch = mnist_arch(e01="conv_5", e02="conv_5", e12="conv_5", e13="skip_connect")
    assert mnist1d.active_edges(arch) == [(0, 1, "conv_5"), (1, 3, "skip_connect")]


def test_active_edges_of_the_empty_cell(nb201: SearchSpace) -> None:
    assert nb201.active_edges(nb201.parse(NB201_EXAMPLES[1])) == []


def test_active_edges_through_a_chain(nb201: SearchSpace) -> None:
    arch = nb201.parse("|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|skip_connect~2|")
    assert nb201.active_edges(arch) == [(0, 1, "nor_conv_3x3"), (1, 2, "avg_pool_3x3"), (2, 3, "skip_connect")]


# --- describe --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nb201", "mnist1d"])
def test_describe_mentions_size_and_ops(name: str) -> None:
    space = load_space(name)
    text = space.describe()
    assert name in text
    assert f"{space.size:,}" in text or str(space.size) in text
    for ops in space.choices.values():
        for op in ops:
            assert op in text
    for label in space.choices:
        assert label in text


# --- space files ------------------------------------------------------------------------------
def nb201_data() -> dict[str, Any]:
    data = yaml.safe_load(builtin_spaces()["nb201"].read_text())
    assert isinstance(data, dict)
    return copy.deepcopy(data)


def write_space(tmp_path: Path, data: Any, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _set(keys: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


def _delete(keys: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return mutate


INVALID_SPACES = {
    "unknown top-level key": (_set(("optimiser",), "sgd"), "<top level>", ["unknown key", "optimiser", "skeleton"]),
    "missing top-level key": (_delete(("dims",)), "<top level>", ["missing key", "dims"]),
    "missing nested key": (_delete(("skeleton", "stem_channels")), "skeleton", ["missing key", "stem_channels"]),
    "unknown cell key": (_set(("cell", "depth"), 3), "cell", ["unknown key", "depth"]),
    "unknown op": (_set(("cell", "ops"), ["none", "skip_connect", "nor_conv_9x9"]), "cell.ops",
                   ["nor_conv_9x9", "valid choices", *OPS.names()]),
    "duplicate op": (_set(("cell", "ops"), ["none", "skip_connect", "none"]), "cell.ops", ["twice"]),
    "empty ops": (_set(("cell", "ops"), []), "cell.ops", ["non-empty list"]),
    "cycle": (_set(("cell", "edges"), [[0, 1], [1, 2], [2, 1], [2, 3]]), "cell.edges", ["acyclic", "cycle"]),
    "self loop": (_set(("cell", "edges"), [[0, 1], [1, 1], [1, 2], [2, 3]]), "cell.edges", ["cycle"]),
    "backward edge": (_set(("cell", "edges"), [[0, 2], [2, 1], [1, 3]]), "cell.edges", ["[2, 1]", "src < dst"]),
    "unreachable node": (_set(("cell", "edges"), [[0, 1], [1, 3], [2, 3]]), "cell.edges",
                         ["[2]", "cannot be reached from the input"]),
    "node not leading to output": (_set(("cell", "edges"), [[0, 1], [0, 2], [1, 3]]), "cell.edges",
                                   ["[2]", "do not lead to the output"]),
    "edge outside the cell": (_set(("cell", "edges"), [[0, 1], [1, 4]]), "cell.edges", ["[1, 4]", "outside"]),
    "malformed edge": (_set(("cell", "edges"), [[0, 1, 2]]), "cell.edges", ["[src, dst]"]),
    "edges neither all nor list": (_set(("cell", "edges"), "some"), "cell.edges", ["'all'", "'some'"]),
    "one node": (_set(("cell", "nodes"), 1), "cell.nodes", ["at least 2 nodes"]),
    "dims 3": (_set(("dims",), 3), "dims", ["1 or 2", "3"]),
    "dims as text": (_set(("dims",), "2d"), "dims", ["1 or 2", "2d"]),
    "zero channels": (_set(("skeleton", "stages", 1, "channels"), 0), "skeleton.stages[1].channels",
                      ["positive integer", "0"]),
    "negative stem": (_set(("skeleton", "stem_channels"), -16), "skeleton.stem_channels",
                      ["positive integer", "-16"]),
    "fractional cells": (_set(("skeleton", "stages", 0, "cells"), 2.5), "skeleton.stages[0].cells",
                         ["positive integer", "2.5"]),
    "no stages": (_set(("skeleton", "stages"), []), "skeleton.stages", ["non-empty list"]),
    "empty name": (_set(("name",), ""), "name", ["non-empty string"]),
    "skeleton not a mapping": (_set(("skeleton",), [16, 32]), "skeleton", ["must be a mapping"]),
}


@pytest.mark.parametrize("case", list(INVALID_SPACES))
def test_invalid_space_files_name_file_field_and_problem(tmp_path: Path, case: str) -> None:
    mutate, field, fragments = INVALID_SPACES[case]
    data = nb201_data()
    mutate(data)
    path = write_space(tmp_path, data, name="broken_space.yaml")
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert str(path) in message
    assert f"field {field!r}" in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_the_unmodified_copy_is_valid(tmp_path: Path) -> None:
    # Guards the test above: each case breaks exactly one thing of a valid file.
    space = load_space(write_space(tmp_path, nb201_data()))
    assert space.size == 15625


@pytest.mark.parametrize("text", ["name: [unclosed\n", "name: nb201\n  dims: 2\n bad indent: [\n", "\tname: x\n"])
def test_malformed_yaml_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "malformed.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert str(path) in message
    assert "YAML" in message


def test_yaml_that_is_not_a_mapping_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- name\n- dims\n")
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert str(path) in str(info.value)
    assert "mapping" in str(info.value)


def test_user_space_file_loads_by_path(tmp_path: Path) -> None:
    data = {
        "name": "tiny",
        "description": "a three-node chain with a shortcut",
        "dims": 1,
        "skeleton": {"stem_channels": 8, "stages": [{"channels": 8, "cells": 1}, {"channels": 16, "cells": 1}]},
        "cell": {"nodes": 3, "edges": [[0, 1], [1, 2], [0, 2]], "ops": ["none", "skip_connect", "conv_3"]},
    }
    path = write_space(tmp_path, data, name="tiny.yml")
    for ref in (path, str(path)):
        space = load_space(ref)
        assert space.name == "tiny"
        assert space.source == path
        assert space.citation == ""
        assert space.edges == [(0, 1), (0, 2), (1, 2)]
        assert space.size == 3**3
        assert space.output_node == 2
        assert [(st.channels, st.cells) for st in space.stages] == [(8, 1), (16, 1)]
        for arch in space.enumerate():
            assert space.parse(str(arch)) == arch
    assert "27" in load_space(path).describe()


def test_space_file_without_yaml_suffix_loads_by_path(tmp_path: Path) -> None:
    path = write_space(tmp_path, nb201_data(), name="my_space.txt")
    assert load_space(str(path)).size == 15625

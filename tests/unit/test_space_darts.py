"""The ``darts`` kind (DARTS / ENAS micro cells): choices, strings, errors, the supernet's paths,
stand-alone networks and export, the DARTS paper's parameter count, and a 1-D search end to end."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import assert_round_trips, assert_standalone_matches

from wpl_nas.errors import ConfigError
from wpl_nas.evaluation.anatomy import stage_features
from wpl_nas.ops import OPS, FactorizedReduce, create_op
from wpl_nas.spaces import DartsSpace, Genotype, SearchSpace, builtin_spaces, load_space
from wpl_nas.supernet import DartsSupernet, Supernet
from wpl_nas.tracking.figures import cell_figure, png_bytes, space_figure

DARTS_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5")
ENAS_OPS = ("skip_connect", "sep_conv_3x3", "sep_conv_5x5", "avg_pool_3x3", "max_pool_3x3")


def spec(**cell: Any) -> dict[str, Any]:
    """A tiny 2-D darts space: 3 nodes, every DARTS op, 4 channels, 3 cells (the last two reducing)."""
    return {"kind": "darts", "name": "tiny-darts", "dims": 2,
            "skeleton": {"channels": 4, "cells": 3, "stem_multiplier": 2},
            "cell": {"nodes": 3, "ops": list(DARTS_OPS), "output": "all", **cell}}


def tiny(output: str = "all") -> DartsSpace:
    space = SearchSpace.from_dict(spec(output=output))
    assert isinstance(space, DartsSpace)
    return space


def cell_size(nodes: int, ops: int) -> int:
    """Architectures of one cell: node j = 2 .. nodes + 1 picks (input, op) twice among j inputs."""
    return math.prod((j * ops) ** 2 for j in range(2, nodes + 2))


# --- the built-in spaces ------------------------------------------------------------------
def test_the_builtin_darts_space_is_the_papers():
    space = load_space("darts")
    assert isinstance(space, DartsSpace) and space.kind == "darts" and space.dims == 2
    assert space.source == builtin_spaces()["darts"]
    assert (space.nodes, space.ops, space.output) == (4, DARTS_OPS, "all")
    assert (space.channels, space.cells, space.stem_multiplier) == (16, 8, 3)
    assert space.reduction_cells == (2, 5)  # DARTS: layers // 3 and 2 * layers // 3
    assert space.size == cell_size(4, 8) ** 2  # a normal and a reduction cell
    assert "DARTS" in space.citation and "ICLR 2019" in space.citation
    assert "concatenation of all intermediate nodes" in space.describe()


def test_the_builtin_enas_micro_space_is_the_papers():
    space = load_space("enas-micro")
    assert isinstance(space, DartsSpace)
    assert (space.nodes, space.ops, space.output) == (5, ENAS_OPS, "loose_ends")
    assert (space.channels, space.cells) == (20, 8) and space.reduction_cells == (2, 5)
    assert space.size == cell_size(5, 5) ** 2
    assert "Efficient Neural Architecture Search" in space.citation
    assert "loose ends" in space.describe()


# --- choices and architectures ------------------------------------------------------------
def test_choices_picks_and_loose_ends():
    space = tiny("loose_ends")
    labels = list(space.choices)
    assert labels[:4] == ["normal/n2/in0", "normal/n2/op0", "normal/n2/in1", "normal/n2/op1"]
    assert len(labels) == 2 * 3 * 4 and labels[12] == "reduce/n2/in0"
    assert all("." not in label for label in labels)  # labels name supernet modules
    assert space.choices["normal/n4/in1"] == ("0", "1", "2", "3")
    assert space.choices["reduce/n3/op0"] == DARTS_OPS
    # Normal: 2 <- 0, 1; 3 <- 2 (sep), 2 (none); 4 <- 1, 1. Node 3 is read only through `none`.
    arch = space.from_darts_genotype(
        [("sep_conv_3x3", 0), ("skip_connect", 1), ("sep_conv_3x3", 2), ("none", 2), ("max_pool_3x3", 1),
         ("max_pool_3x3", 1)],
        [("max_pool_3x3", 0), ("none", 1), ("dil_conv_5x5", 2), ("avg_pool_3x3", 0), ("sep_conv_5x5", 3),
         ("skip_connect", 2)])
    assert space.picks(arch, "normal")[3] == (2, 3, "none")
    assert space.live_picks(arch, "normal") == [(0, 2, "sep_conv_3x3"), (1, 2, "skip_connect"),
                                                (2, 3, "sep_conv_3x3"), (1, 4, "max_pool_3x3"),
                                                (1, 4, "max_pool_3x3")]
    assert space.concat(arch, "normal") == (3, 4)  # node 2 is read by node 3
    assert space.concat(arch, "reduce") == (4,)  # 2 and 3 are read by node 4
    assert tiny("all").concat(arch, "reduce") == (2, 3, 4)
    net = Supernet(space, in_channels=3, num_classes=5)
    assert isinstance(net, DartsSupernet)
    # Both slots of normal node 4 run one module (the same edge and op): one unit.
    assert net.path_units(arch) == {
        ("normal/0->2", "sep_conv_3x3"), ("normal/1->2", "skip_connect"), ("normal/2->3", "sep_conv_3x3"),
        ("normal/1->4", "max_pool_3x3"), ("reduce/0->2", "max_pool_3x3"), ("reduce/2->3", "dil_conv_5x5"),
        ("reduce/0->3", "avg_pool_3x3"), ("reduce/3->4", "sep_conv_5x5"), ("reduce/2->4", "skip_connect")}


def test_suggest_parse_and_string_round_trip():
    space = tiny()
    assert all(isinstance(arch, Genotype) for arch in assert_round_trips(space))
    rng = random.Random(0)
    assert all(space.validate(space.sample(rng)) for _ in range(10))


def arch_text(space: DartsSpace, **changes: str) -> str:
    values = {label: values[0] for label, values in space.choices.items()}
    values.update({label.replace("_", "/"): value for label, value in changes.items()})
    return str(space.make(values))


@pytest.mark.parametrize(("changes", "message"), [
    ({"normal_n3_in1": "3"}, "value '3' of normal/n3/in1 is not in space 'tiny-darts'; valid choices: 0, 1, 2"),
    ({"reduce_n4_op0": "conv_3x3"}, "value 'conv_3x3' of reduce/n4/op0 is not in space 'tiny-darts'; valid "
                                    "choices: none, max_pool_3x3, avg_pool_3x3, skip_connect, sep_conv_3x3"),
])
def test_bad_architectures_name_the_value_and_the_choices(changes, message):
    space = tiny()
    with pytest.raises(ConfigError, match=message):
        space.parse(arch_text(space, **changes))


def test_incomplete_architectures_and_genotypes_are_rejected():
    space = tiny()
    with pytest.raises(ConfigError, match=r"missing choices \['normal/n2/op0'"):
        space.parse("normal/n2/in0=0")
    with pytest.raises(ConfigError, match="architectures of space 'tiny-darts' look like normal/n2/in0=0;"):
        space.parse("|none~0|")
    with pytest.raises(ConfigError, match=r"the reduce cell .* needs 6 \(op, input\) pairs \(2 per node\), but got 2"):
        space.from_darts_genotype([("none", 0)] * 6, [("none", 0)] * 2)
    with pytest.raises(ConfigError, match="value 'sep_conv_7x7' of normal/n2/op0"):
        space.from_darts_genotype([("sep_conv_7x7", 0)] * 6, [("none", 0)] * 6)


@pytest.mark.parametrize(("change", "message"), [
    ({"dims": 3}, "field 'dims': must be 1 or 2, but got 3"),
    ({"cell": {"nodes": 2, "ops": ["sep_conv_3x3", "sep_conv_7x7"]}},
     "field 'cell.ops': unknown operation 'sep_conv_7x7' \\(did you mean 'sep_conv_5x5'\\?\\); "
     "valid choices: none, skip_connect"),
    ({"cell": {"nodes": 2, "ops": ["none"]}}, "field 'cell.ops': needs at least one op other than 'none'"),
    ({"cell": {"nodes": 2, "ops": ["skip_connect"], "output": "loose"}},
     "field 'cell.output': unknown value 'loose'; valid choices: all, loose_ends"),
    ({"cell": {"nodes": 0, "ops": ["skip_connect"]}}, "field 'cell.nodes': must be a positive integer, but got 0"),
    ({"cell": {"nodes": 2, "ops": ["skip_connect"], "edges": "all"}},
     r"field 'cell': unknown key\(s\) \['edges'\]; valid keys: \['nodes', 'ops', 'output'\]"),
    ({"skeleton": {"channels": 16}}, r"field 'skeleton': missing key\(s\) \['cells'\]"),
    ({"skeleton": {"channels": 16, "cells": 8, "stem_multiplier": 1.5}},
     "field 'skeleton.stem_multiplier': must be a positive integer, but got 1.5"),
    ({"stages": []}, r"field '<top level>': unknown key\(s\) \['stages'\]"),
    ({"kind": "dart"}, "unknown search space kind 'dart' \\(did you mean 'darts'\\?\\)"),
])
def test_bad_space_files_are_precise_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_dict({**spec(), **change})


def test_a_yaml_file_error_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**spec(), "dims": "2d"}))
    with pytest.raises(ConfigError, match=f"{path}: field 'dims': must be 1 or 2, but got '2d'"):
        load_space(path)


# --- operations ---------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [1, 2])
def test_every_strided_op_halves_every_size_rounding_up(dims):
    x = torch.randn(2, 4, *((7, 6) if dims == 2 else (7,)))
    for name in OPS:
        for stride in (1, 2):
            y = create_op(name, channels=4, dims=dims, stride=stride)(x)
            assert y.shape == (2, 4, *((n + stride - 1) // stride for n in x.shape[2:])), (name, stride)


def test_factorized_reduce_matches_two_strided_convolutions_on_even_sizes():
    torch.manual_seed(0)
    op = FactorizedReduce(2, 4, 6)
    x = torch.randn(2, 4, 8, 8)
    expected = torch.cat([F.conv2d(x.relu(), op.conv_a.weight, stride=2),
                          F.conv2d(x.relu()[:, :, 1:, 1:], op.conv_b.weight, stride=2)], dim=1)
    torch.testing.assert_close(op(x), op.bn(expected))


# --- the supernet ---------------------------------------------------------------------------
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("output", ["all", "loose_ends"])
def test_only_the_path_is_trained_and_the_standalone_network_matches(output):
    space = tiny(output)
    torch.manual_seed(0)
    net = Supernet(space, in_channels=3, num_classes=5, input_shape=(3, 8, 8))
    y = torch.tensor([1, 3])
    ops = {unit: dict(choices.items())
           for stage in net.stages for cell in stage for unit, choices in cell.edges.items()}
    rng = random.Random(1)
    for _ in range(3):
        arch = space.sample(rng)
        net.zero_grad(set_to_none=True)
        with net.use(arch):
            logits = net(X)
            assert logits.shape == (2, 5)
            F.cross_entropy(logits, y).backward()
        used = set(net.parameter_names_of(arch))
        trained = {n for n, p in net.named_parameters() if p.grad is not None}
        assert trained <= used  # nothing off the path gets a gradient
        # Every op on the path trains; a skeleton tensor may only be idle if it preprocesses a
        # cell input that no pick of that cell type reads.
        assert {n for n in used if ".edges." in n} <= trained
        assert all(".preprocess" in n for n in used - trained)
        units = net.path_units(arch)
        weighted = {(unit, op) for unit, op in units if list(ops[unit][op].parameters())}  # pools have none
        assert {(n.split(".")[4], n.split(".")[5]) for n in used if ".edges." in n} == weighted

        assert isinstance(assert_standalone_matches(net, arch, X), DartsSupernet)


def test_stages_start_at_the_reduction_cells_and_feed_the_anatomy():
    space = SearchSpace.from_dict({**spec(), "skeleton": {"channels": 4, "cells": 5}})
    assert isinstance(space, DartsSpace) and space.reduction_cells == (1, 3)
    net = Supernet(space, in_channels=3, num_classes=5)
    assert [[cell.cell_type for cell in stage] for stage in net.stages] == [
        ["normal"], ["reduce", "normal"], ["reduce", "normal"]]
    assert net.stem[0].out_channels == 12  # the default stem multiplier, 3
    features = stage_features(net, space.sample(random.Random(0)), X, spatial=8)
    # Each stage's output: 3 nodes x (4, 8, 16) channels at (8, 4, 2) pixels.
    assert [tuple(features[f"stage{i}"].shape) for i in (1, 2, 3)] == [(2, 12, 8, 8), (2, 24, 4, 4), (2, 48, 2, 2)]
    assert tuple(features["logits"].shape) == (2, 5)


def test_a_node_with_only_none_inputs_is_zero():
    space = tiny()
    arch = space.from_darts_genotype([("none", 0), ("none", 1), ("sep_conv_3x3", 2), ("skip_connect", 0),
                                      ("none", 0), ("none", 3)], [("none", 0)] * 6)
    net = Supernet(space, in_channels=3, num_classes=5).eval()
    cell = net.stages[0][0]
    s = net.stem(X)
    out = cell(s, s, net.plan(arch)["normal"])
    assert out.shape == (2, 12, 8, 8)
    assert out[:, :4].abs().sum() == 0 and out[:, 8:].abs().sum() == 0 and out[:, 4:8].abs().sum() > 0
    with net.use(arch):
        assert torch.isfinite(net(X)).all()  # reduction cells of zeros only: a constant network


def test_the_darts_v2_network_has_the_papers_parameter_count():
    # The DARTS (second order) CIFAR-10 cell, from DARTS's genotypes.py: (op, input) pairs, two per node.
    normal = [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
              ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)]
    reduce = [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
              ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)]
    data = yaml.safe_load(builtin_spaces()["darts"].read_text())
    data["skeleton"].update(channels=36, cells=20)  # the evaluation network
    space = SearchSpace.from_dict(data)
    assert isinstance(space, DartsSpace)
    arch = space.from_darts_genotype(normal, reduce)
    net = Supernet(space, in_channels=3, num_classes=10, fixed=arch, input_shape=(3, 32, 32))
    # The paper reports 3.3M; DARTS's train.py logs "param size = 3.349342MB" for this network
    # without the auxiliary head. The skeleton is the same, so the count is exact.
    assert net.count_parameters() == 3_349_342
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_both_cells_draw_with_and_without_an_architecture():
    space = tiny("loose_ends")
    arch = space.sample(random.Random(0))
    graph = space.dag(arch)
    for cell, y in (("normal", 0.0), ("reduce", -2.6)):  # rows 1.0 + 0.4 * (nodes + 1) apart
        assert graph.nodes[cell, 0]["label"] == "k-2" and graph.nodes[cell, 2]["pos"] == pytest.approx((2.0, y))
        live = {(s[1], d[1]) for s, d, on in graph.edges(data="live") if on and s[0] == cell and d[1] != 5}
        assert live == {(s, d) for s, d, _ in space.live_picks(arch, cell)}
        assert {s[1] for s, d in graph.edges if s[0] == cell and d[1] == 5} == set(space.concat(arch, cell))
    everything = space.dag()
    assert everything.number_of_edges() == 2 * (2 + 3 + 4 + 3)  # inputs of nodes 2, 3, 4 and their outputs
    assert png_bytes(cell_figure(space, arch)).startswith(b"\x89PNG")
    assert png_bytes(space_figure(space)).startswith(b"\x89PNG")


# --- end to end ---------------------------------------------------------------------------



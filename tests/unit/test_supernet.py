"""Tests for ``wpl_nas.supernet`` and ``wpl_nas.ops``.

The key property: running one path of the supernet is the same computation as the stand-alone
network of that architecture holding the same weights -- same outputs, same gradients on the
path's parameters -- and the supernet's parameters off the path take no part in it at all.
"""

from __future__ import annotations

import re

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wpl_nas.errors import ConfigError
from wpl_nas.ops import OPS, create_op
from wpl_nas.spaces import Architecture, SearchSpace, edge_label, load_space
from wpl_nas.supernet import Supernet

NUM_CLASSES = 10
MNIST_EDGES = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]


def mnist_arch(**ops: str) -> Architecture:
    """An mnist1d architecture from keyword ops ``e01="conv_5"``; unspecified edges are ``none``."""
    return Architecture.from_ops({(s, d): ops.get(f"e{s}{d}", "none") for s, d in MNIST_EDGES})


MNIST_ARCHS = {
    "all_conv": mnist_arch(**{f"e{s}{d}": "conv_5" for s, d in MNIST_EDGES}),
    "mixed_with_none": mnist_arch(e01="conv_5", e02="skip_connect", e13="conv_5", e23="conv_5"),
    "dead_node_2": mnist_arch(e01="conv_5", e02="conv_5", e12="conv_5", e13="skip_connect"),
    "only_skip_to_output": mnist_arch(e01="conv_5", e02="conv_5", e12="skip_connect", e03="skip_connect"),
    "source_without_input": mnist_arch(e13="conv_5"),  # node 1 gets only `none`: its conv sees zeros
    "all_none": mnist_arch(),
}
NB201_ARCHS = {
    "all_conv3x3": "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    "benchmark_example":
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
    "dead_edges": "|nor_conv_1x1~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|none~2|",
    "all_none": "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
}


@pytest.fixture(scope="module")
def mnist1d() -> SearchSpace:
    return load_space("mnist1d")


@pytest.fixture(scope="module")
def nb201() -> SearchSpace:
    return load_space("nb201")


def make_supernet(space: SearchSpace, in_channels: int, seed: int = 0) -> Supernet:
    """A supernet with every weight (batch-norm affine ones included) moved off its default,
    so that a path that wrongly drops or adds an op shows in the output."""
    torch.manual_seed(seed)
    net = Supernet(space, in_channels=in_channels, num_classes=NUM_CLASSES)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net


def batch(space: SearchSpace, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (4, 1, 40) if space.dims == 1 else (2, 3, 8, 8)
    x = torch.randn(*shape, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (x.shape[0],), generator=gen)
    return x, y


Grads = dict[str, torch.Tensor | None]


def loss_and_grads(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Grads]:
    net.zero_grad(set_to_none=True)
    out = net(x)
    F.cross_entropy(out, y).backward()
    return out.detach(), {name: p.grad for name, p in net.named_parameters()}


def input_reaches_output(space: SearchSpace, arch: Architecture) -> bool:
    live = nx.DiGraph()
    live.add_nodes_from(space.graph.nodes)
    live.add_edges_from((s, d) for s, d, _ in space.active_edges(arch))
    return nx.has_path(live, 0, space.output_node)


def check_path_equivalence(space: SearchSpace, in_channels: int, arch: Architecture) -> None:
    supernet = make_supernet(space, in_channels)
    x, y = batch(space)
    supernet.set_arch(arch)
    out, grads = loss_and_grads(supernet, x, y)
    on_path = supernet.parameter_names_of(arch)
    assert on_path, "the skeleton is always on the path"

    # Off the path: no gradient at all, not even a zero one.
    for name, grad in grads.items():
        if name not in on_path:
            assert grad is None, f"{name} is off the path of {arch} but got a gradient"
    if input_reaches_output(space, arch):
        for name in on_path:
            assert grads[name] is not None, f"{name} is on the path of {arch} but got no gradient"

    independent = Supernet(space, in_channels=in_channels, num_classes=NUM_CLASSES, fixed=arch)
    independent.load_state_dict(supernet.parameters_of(arch))
    for label, net in (("standalone()", supernet.standalone(arch)), ("fixed=arch", independent)):
        assert net.arch == arch
        net_out, net_grads = loss_and_grads(net, x, y)
        assert set(net_grads) == set(on_path), f"{label}: parameter names differ from the supernet path"
        assert net_out.shape == (x.shape[0], NUM_CLASSES)
        assert torch.allclose(net_out, out, atol=1e-6), f"{label}: outputs differ for {arch}"
        for name in on_path:
            a, b = grads[name], net_grads[name]
            assert (a is None) == (b is None), f"{label}: {name} has a gradient in only one network"
            if a is not None and b is not None:
                assert torch.allclose(a, b, atol=1e-6), f"{label}: gradient of {name} differs for {arch}"


# --- the key property ---------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(MNIST_ARCHS))
def test_mnist1d_path_equals_standalone_network(mnist1d: SearchSpace, key: str) -> None:
    check_path_equivalence(mnist1d, 1, mnist1d.validate(MNIST_ARCHS[key]))


@pytest.mark.parametrize("key", list(NB201_ARCHS))
def test_nb201_path_equals_standalone_network(nb201: SearchSpace, key: str) -> None:
    check_path_equivalence(nb201, 3, nb201.parse(NB201_ARCHS[key]))


def test_different_paths_give_different_outputs(mnist1d: SearchSpace) -> None:
    net = make_supernet(mnist1d, 1)
    x, _ = batch(mnist1d)
    outputs = []
    for arch in MNIST_ARCHS.values():
        net.set_arch(arch)
        with torch.no_grad():
            outputs.append(net(x))
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert not torch.allclose(outputs[i], outputs[j])


def test_standalone_holds_a_copy(mnist1d: SearchSpace) -> None:
    supernet = make_supernet(mnist1d, 1)
    arch = MNIST_ARCHS["mixed_with_none"]
    alone = supernet.standalone(arch)
    assert alone.fixed == arch
    shared = supernet.parameters_of(arch)
    copied = dict(alone.named_parameters())
    assert set(copied) == set(shared)
    before = {name: p.detach().clone() for name, p in shared.items()}
    with torch.no_grad():
        for name, p in copied.items():
            assert torch.equal(p, shared[name])
            assert p.data_ptr() != shared[name].data_ptr()
            p.add_(1.0)
    for name, p in shared.items():
        assert torch.equal(p, before[name])


# --- choosing the path ------------------------------------------------------------------------------
def test_forward_without_a_path_refuses(mnist1d: SearchSpace) -> None:
    net = Supernet(mnist1d, in_channels=1, num_classes=NUM_CLASSES)
    x, _ = batch(mnist1d)
    assert net.arch is None
    with pytest.raises(RuntimeError, match="set_arch"):
        net(x)
    net.set_arch(MNIST_ARCHS["all_conv"])
    assert net(x).shape == (4, NUM_CLASSES)
    net.set_arch(None)
    with pytest.raises(RuntimeError, match="set_arch"):
        net(x)


def test_use_restores_the_previous_choice(mnist1d: SearchSpace) -> None:
    net = make_supernet(mnist1d, 1)
    x, _ = batch(mnist1d)
    a, b = MNIST_ARCHS["all_conv"], MNIST_ARCHS["dead_node_2"]
    net.set_arch(a)
    with net.use(b) as inner:
        assert inner is net
        assert net.arch == b
        with torch.no_grad():
            assert torch.allclose(net(x), net.standalone(b)(x), atol=1e-6)
    assert net.arch == a
    with pytest.raises(KeyError), net.use(b):
        raise KeyError("boom")
    assert net.arch == a
    net.set_arch(None)
    with net.use(a):
        assert net.arch == a
    assert net.arch is None
    with pytest.raises(RuntimeError, match="set_arch"):
        net(x)


def test_set_arch_validates(mnist1d: SearchSpace, nb201: SearchSpace) -> None:
    net = Supernet(mnist1d, in_channels=1, num_classes=NUM_CLASSES)
    with pytest.raises(ConfigError):
        net.set_arch(nb201.parse(NB201_ARCHS["all_conv3x3"]))  # nor_conv_3x3 is not an mnist1d op
    assert net.arch is None


def test_fixed_network_refuses_another_arch(mnist1d: SearchSpace) -> None:
    a, b = MNIST_ARCHS["mixed_with_none"], MNIST_ARCHS["all_conv"]
    net = Supernet(mnist1d, in_channels=1, num_classes=NUM_CLASSES, fixed=a)
    assert net.arch == a
    with pytest.raises(ValueError, match="fixed"):
        net.set_arch(b)
    with pytest.raises(ValueError, match="fixed"):
        net.set_arch(None)
    with pytest.raises(ValueError, match="fixed"), net.use(b):
        pass
    assert net.arch == a
    net.set_arch(a)
    with net.use(a):
        x, _ = batch(mnist1d)
        assert net(x).shape == (4, NUM_CLASSES)
    with pytest.raises(ConfigError):
        Supernet(mnist1d, in_channels=1, num_classes=NUM_CLASSES, fixed=Architecture(((0, 1, "conv_5"),)))


def test_fixed_network_holds_only_the_live_ops(mnist1d: SearchSpace) -> None:
    arch = MNIST_ARCHS["dead_node_2"]  # live: 0->1 conv_5, 1->3 skip_connect
    net = Supernet(mnist1d, in_channels=1, num_classes=NUM_CLASSES, fixed=arch)
    pattern = r"stages\.\d+\.\d+\.edges\.[^.]+\.[^.]+"
    op_names = {name for name, _ in net.named_modules() if re.fullmatch(pattern, name)}
    cells = [f"stages.{i}.{j}" for i, j in [(0, 0), (0, 1), (1, 1), (1, 2)]]  # stage 1 starts with a reduction
    live = [("0->1", "conv_5"), ("1->3", "skip_connect")]
    assert op_names == {f"{cell}.edges.{edge}.{op}" for cell in cells for edge, op in live}


# --- which weights a path uses ------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(MNIST_ARCHS))
def test_parameters_of_are_skeleton_plus_live_ops(mnist1d: SearchSpace, key: str) -> None:
    arch = MNIST_ARCHS[key]
    net = Supernet(mnist1d, in_channels=1, num_classes=NUM_CLASSES)
    all_names = [name for name, _ in net.named_parameters()]
    skeleton = [name for name in all_names if ".edges." not in name]
    live = {f".edges.{edge_label(s, d)}.{op}." for s, d, op in mnist1d.active_edges(arch)}
    expected = [name for name in all_names if name in skeleton or any(tag in name for tag in live)]
    names = net.parameter_names_of(arch)
    assert names == expected  # the same set, in named_parameters order
    # Independent count: 4 cells, each live conv_5 holds conv weight + BN weight + BN bias.
    live_convs = sum(op == "conv_5" for _, _, op in mnist1d.active_edges(arch))
    assert len(names) - len(skeleton) == 4 * 3 * live_convs
    params = dict(net.named_parameters())
    for name, p in net.parameters_of(arch).items():
        assert p is params[name]


def test_off_path_weights_do_not_change_the_output(mnist1d: SearchSpace) -> None:
    net = make_supernet(mnist1d, 1)
    arch = MNIST_ARCHS["dead_node_2"]
    x, _ = batch(mnist1d)
    net.set_arch(arch)
    on_path = set(net.parameter_names_of(arch))
    with torch.no_grad():
        before = net(x)
        for name, p in net.named_parameters():
            if name not in on_path:
                p.normal_(mean=3.0, std=2.0)
        assert torch.equal(net(x), before)
        # Sanity check: an on-path op weight does change it.
        net.get_parameter("stages.0.0.edges.0->1.conv_5.1.weight").mul_(-2.0)
        assert not torch.allclose(net(x), before)


def test_nb201_parameter_counts(nb201: SearchSpace) -> None:
    net = Supernet(nb201, in_channels=3, num_classes=NUM_CLASSES)
    all_conv = nb201.parse(NB201_ARCHS["all_conv3x3"])
    # NAS-Bench-201 lists 1.53 MB of parameters for this cell on CIFAR-10.
    assert net.count_parameters(all_conv) == 1_531_546
    skeleton = sum(p.numel() for name, p in net.named_parameters() if ".edges." not in name)
    assert net.count_parameters(nb201.parse(NB201_ARCHS["all_none"])) == skeleton
    assert net.count_parameters() == sum(p.numel() for p in net.parameters())
    assert skeleton < net.count_parameters(all_conv) < net.count_parameters()
    for key in ("all_conv3x3", "dead_edges"):
        arch = nb201.parse(NB201_ARCHS[key])
        fixed = Supernet(nb201, in_channels=3, num_classes=NUM_CLASSES, fixed=arch)
        assert fixed.count_parameters() == net.count_parameters(arch)


def test_dead_and_none_edges_add_no_parameters(nb201: SearchSpace) -> None:
    net = Supernet(nb201, in_channels=3, num_classes=NUM_CLASSES)
    dead = nb201.parse(NB201_ARCHS["dead_edges"])
    # Only 0->1 (1x1), 1->3 (3x3) are live; 0->2 (3x3) and 1->2 (pool) feed node 2, which is dead.
    live_only = nb201.parse("|nor_conv_1x1~0|+|none~0|none~1|+|none~0|nor_conv_3x3~1|none~2|")
    assert net.parameter_names_of(dead) == net.parameter_names_of(live_only)
    assert net.count_parameters(dead) == net.count_parameters(live_only)


# --- operations ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("name", OPS.names())
def test_every_op_builds_and_preserves_shape(name: str, dims: int) -> None:
    torch.manual_seed(0)
    op = create_op(name, channels=6, dims=dims)
    assert isinstance(op, nn.Module)
    shape = (2, 6, 11) if dims == 1 else (2, 6, 9, 7)
    x = torch.randn(*shape)
    for train in (True, False):
        op.train(train)
        out = op(x)
        assert out.shape == x.shape
        assert torch.isfinite(out).all()
    if name == "none":
        assert torch.equal(out, torch.zeros_like(x))
    if name == "skip_connect":
        assert torch.equal(out, x)
    if "conv" in name:
        assert sum(p.numel() for p in op.parameters()) > 0
    else:
        assert list(op.parameters()) == []


@pytest.mark.parametrize("name", OPS.names())
def test_every_op_is_deterministic_and_keeps_no_running_stats(name: str) -> None:
    # Batch norm on batch statistics: no buffers that a later candidate could overwrite.
    op = create_op(name, channels=3, dims=2)
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(op(x), op(x))
    assert list(op.buffers()) == []


@pytest.mark.parametrize("bad", ["nor_conv_9x9", "conv5", "identity", ""])
def test_unknown_op_lists_the_valid_names(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_op(bad, channels=4, dims=2)
    message = str(info.value)
    assert f"unknown operation {bad!r}" in message
    for name in OPS.names():
        assert name in message


def test_unknown_op_suggests_a_close_name() -> None:
    with pytest.raises(ConfigError, match="did you mean 'nor_conv_3x3'"):
        create_op("nor_conv_3x33", channels=4, dims=1)


def test_registry_names_are_unique_and_include_the_benchmark_ops() -> None:
    names = OPS.names()
    assert len(names) == len(set(names)) == len(OPS)
    assert {"none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3", "conv_5"} <= set(names)

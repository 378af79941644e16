"""The ``mlp`` kind (the WPL paper's MNIST family): choices, strings, sliced weight sharing, stand-alone
export, parameter counts, and a search end to end."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_round_trips, assert_standalone_matches, params_by_formula

from wpl_nas.errors import ConfigError
from wpl_nas.spaces import Genotype, MLPSpace, SearchSpace, load_space
from wpl_nas.spaces._mlp import ACTIVATIONS
from wpl_nas.supernet import MLPSupernet, Supernet
from wpl_nas.tracking.figures import cell_figure, png_bytes, space_figure

SPEC = {"kind": "mlp", "name": "tiny-mlp", "layers": 2, "widths": [3, 5, 8],
        "activations": ["relu", "tanh", "leaky_relu"]}
SHAPE = (2, 6)  # one sample: 12 inputs once flattened
CLASSES = 4


@pytest.fixture(scope="module")
def space() -> MLPSpace:
    s = SearchSpace.from_dict(SPEC)
    assert isinstance(s, MLPSpace)
    return s


def test_the_builtin_space_is_the_papers_family():
    space = load_space("mlp")
    assert isinstance(space, MLPSpace) and space.dims is None
    assert space.size == 9 ** 3
    assert list(space.choices) == ["l1/width", "l1/activation", "l2/width", "l2/activation", "l3/width",
                                   "l3/activation"]
    assert space.choices["l2/width"] == ("64", "128", "256")
    assert "Benyahia" in space.citation and "flattened" in space.describe()


def test_layers_as_a_list_override_the_defaults():
    space = SearchSpace.from_dict({**SPEC, "layers": [{"widths": [16]}, None, {"activations": ["gelu", "elu"]}]})
    assert isinstance(space, MLPSpace)
    assert space.choices == {"l1/width": ("16",), "l1/activation": ("relu", "tanh", "leaky_relu"),
                             "l2/width": ("3", "5", "8"), "l2/activation": ("relu", "tanh", "leaky_relu"),
                             "l3/width": ("3", "5", "8"), "l3/activation": ("gelu", "elu")}
    own = SearchSpace.from_dict({"kind": "mlp", "name": "own", "layers": [
        {"widths": [4], "activations": ["sigmoid"]}, {"widths": [2, 3], "activations": ["identity"]}]})
    assert own.size == 2


def test_the_activation_registry():
    assert list(ACTIVATIONS) == ["relu", "tanh", "sigmoid", "gelu", "elu", "leaky_relu", "identity"]
    reference = {"relu": torch.nn.ReLU(), "tanh": torch.nn.Tanh(), "sigmoid": torch.nn.Sigmoid(),
                 "gelu": torch.nn.GELU(), "elu": torch.nn.ELU(), "leaky_relu": torch.nn.LeakyReLU(),
                 "identity": torch.nn.Identity()}
    x = torch.linspace(-3, 3, 13)
    for name in ACTIVATIONS:
        torch.testing.assert_close(ACTIVATIONS.get(name)(x), reference[name](x), msg=name)


def test_suggest_parse_and_string_round_trip(space):
    assert all(isinstance(arch, Genotype) for arch in assert_round_trips(space))
    assert len(set(space.enumerate())) == space.size == 9 ** 2


GOOD = "l1/width=5;l1/activation=tanh;l2/width=3;l2/activation=relu"


@pytest.mark.parametrize(("text", "message"), [
    (GOOD.replace("l1/width=5", "l1/width=4"),
     "value '4' of l1/width is not in space 'tiny-mlp'; valid choices: 3, 5, 8"),
    (GOOD.replace("l2/activation=relu", "l2/activation=gelu"),
     "value 'gelu' of l2/activation is not in space 'tiny-mlp'; valid choices: relu, tanh, leaky_relu"),
    ("l1/width=5;l1/activation=tanh", r"missing choices \['l2/width', 'l2/activation'\]"),
    (GOOD + ";l3/width=3", r"unexpected choices \['l3/width'\]"),
    ("l1/width", "entry 'l1/width' must look like label=value .*look like l1/width=3;l1/activation=relu"),
])
def test_bad_architectures_name_the_value_and_the_choices(space, text, message):
    with pytest.raises(ConfigError, match=message):
        space.parse(text)


@pytest.mark.parametrize(("change", "message"), [
    ({"layers": 0}, "'layers': must be a positive integer, but got 0"),
    ({"layers": "three"}, "'layers': must be a positive number of hidden layers or a non-empty list of per-layer "
                          r"mappings \(keys \['activations', 'widths'\]\), but got 'three'"),
    ({"layers": [{"width": [3]}]}, r"'layers\[0\]': unknown key\(s\) \['width'\]; valid keys: \['activations', "),
    ({"activations": ["relu", "swish"]},
     "'activations': unknown activation 'swish'; valid choices: relu, tanh, sigmoid, gelu, elu, leaky_relu, identity"),
    ({"layers": [{}, {"activations": ["tanhh"]}]},
     r"'layers\[1\].activations': unknown activation 'tanhh' \(did you mean 'tanh'\?\)"),
    ({"widths": [3, 0]}, "'widths': must be a positive integer, but got 0"),
    ({"widths": [3, 3]}, r"'widths': lists a value twice: \[3, 3\]"),
    ({"kind": "mpl"}, "unknown search space kind 'mpl' \\(did you mean 'mlp'\\?\\)"),
])
def test_bad_space_files_are_precise_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_dict({**SPEC, **change})


def test_a_layer_without_widths_and_no_default_is_an_error(tmp_path):
    path = tmp_path / "mlp.yaml"
    path.write_text("kind: mlp\nname: m\nactivations: [relu]\nlayers:\n  - {widths: [4]}\n  - {}\n")
    with pytest.raises(ConfigError, match=rf"{path}: field 'layers\[1\].widths': missing, and there is no "
                                          "top-level 'widths' to default to"):
        load_space(path)


def test_candidates_share_the_top_left_corner_and_the_standalone_network_matches(space):
    torch.manual_seed(0)
    net = Supernet(space, in_channels=SHAPE[0], num_classes=CLASSES, input_shape=SHAPE)
    assert isinstance(net, MLPSupernet)
    # Each matrix is kept in blocks cut at the width choices 3, 5, 8 (rows) and the inputs (columns).
    assert [lin.rows for lin in (net.stages[i][0].linear for i in range(2))] == [[3, 5, 8], [3, 5, 8]]
    assert [lin.cols for lin in (net.stages[i][0].linear for i in range(2))] == [[12], [3, 5, 8]]
    x = torch.randn(5, *SHAPE)
    y = torch.randint(0, CLASSES, (5,))
    params = dict(net.named_parameters())
    for seed in range(4):
        arch = space.sample(random.Random(seed))
        widths = [12, *(p.width for p in space.picks(arch))]
        net.zero_grad(set_to_none=True)
        with net.use(arch):
            logits = net(x)
            assert logits.shape == (5, CLASSES)
            F.cross_entropy(logits, y).backward()
        used = set(net.parameter_names_of(arch))
        # Only the candidate's corner gets gradients: the optimiser leaves every other block alone.
        assert {n for n, p in net.named_parameters() if p.grad is not None} == used
        for i in range(2):
            rows = sum(params[n].shape[0] for n in used if f".edges.l{i + 1}." in n and n.endswith("c0.weight"))
            cols = sum(params[n].shape[1] for n in used if f".edges.l{i + 1}.r0" in n and n.endswith(".weight"))
            assert (rows, cols) == (widths[i + 1], widths[i])
        assert_standalone_matches(net, arch, x)
    narrow = space.parse("l1/width=3;l1/activation=relu;l2/width=3;l2/activation=relu")
    wide = space.parse("l1/width=8;l1/activation=tanh;l2/width=8;l2/activation=tanh")
    assert set(net.parameter_names_of(narrow)) < set(net.parameter_names_of(wide))  # nested corners


def test_parameter_counts_follow_the_formula(space):
    net = Supernet(space, in_channels=SHAPE[0], num_classes=CLASSES, input_shape=SHAPE)
    assert net.count_parameters() == params_by_formula([12, 8, 8], CLASSES)
    for arch in space.enumerate():
        sizes = [12, *(p.width for p in space.picks(arch))]
        assert net.count_parameters(arch) == params_by_formula(sizes, CLASSES)
    arch = space.parse("l1/width=3;l1/activation=relu;l2/width=8;l2/activation=tanh")
    assert net.standalone(arch).count_parameters() == 12 * 3 + 3 + 3 * 8 + 8 + 8 * CLASSES + CLASSES


def test_any_fixed_size_input_is_flattened(space):
    for shape in [(1, 40), (3, 4, 4)]:
        space.check_data("data", shape)  # 1-D and 2-D data both fit
        net = Supernet(space, in_channels=shape[0], num_classes=CLASSES, input_shape=shape)
        assert net.stages[0][0].linear.cols == [math.prod(shape)]
        with net.use(space.sample(random.Random(0))):
            assert net(torch.randn(2, *shape)).shape == (2, CLASSES)
    plain = Supernet(space, in_channels=9, num_classes=CLASSES)  # no input_shape: (in_channels,)
    assert plain.stages[0][0].linear.cols == [9]


def test_several_heads_slice_each_head(space):
    net = Supernet(space, in_channels=SHAPE[0], num_classes=CLASSES, input_shape=SHAPE, heads=2)
    arch = space.parse("l1/width=5;l1/activation=tanh;l2/width=3;l2/activation=relu@head1")
    x = torch.randn(3, *SHAPE)
    alone = assert_standalone_matches(net, arch, x)
    assert sum(p.numel() for p in alone.heads[1].parameters()) == CLASSES * 3 + CLASSES


def test_the_network_draws_with_and_without_an_architecture(space):
    arch = space.parse(GOOD)
    graph = space.dag(arch)
    assert list(graph.edges) == [("in", "l1"), ("l1", "l2"), ("l2", "out")]
    assert graph.edges["in", "l1"]["label"] == "5\ntanh" and graph.edges["l1", "l2"]["label"] == "3\nrelu"
    assert space.dag().edges["in", "l1"]["label"] == "3|5|8\nrelu|tanh|leaky_relu"
    assert png_bytes(cell_figure(space, arch)).startswith(b"\x89PNG")
    assert png_bytes(space_figure(space)).startswith(b"\x89PNG")


def test_training_a_narrow_candidate_leaves_a_wider_ones_own_weights_alone(space):
    """Momentum and weight decay included: the blocks only the wide candidate uses have no
    gradient while the narrow one trains, so SGD skips them."""
    torch.manual_seed(0)
    net = Supernet(space, in_channels=SHAPE[0], num_classes=CLASSES, input_shape=SHAPE)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    wide = space.parse("l1/width=8;l1/activation=tanh;l2/width=8;l2/activation=tanh")
    narrow = space.parse("l1/width=3;l1/activation=relu;l2/width=5;l2/activation=relu")
    x, y = torch.randn(16, *SHAPE), torch.randint(0, CLASSES, (16,))

    def train(arch: Genotype, steps: int) -> None:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            with net.use(arch):
                F.cross_entropy(net(x), y).backward()
            opt.step()

    train(wide, 3)  # the wide candidate's blocks now carry momentum
    own = set(net.parameter_names_of(wide)) - set(net.parameter_names_of(narrow))
    params = dict(net.named_parameters())
    before = {n: params[n].detach().clone() for n in own}
    train(narrow, 3)
    assert own and all(torch.equal(params[n], before[n]) for n in own)

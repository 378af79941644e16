"""The ``rnn`` kind (ENAS recurrent cell): choices, strings, the supernet's paths, stand-alone export."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_round_trips, assert_standalone_matches

from wpl_nas.errors import ConfigError
from wpl_nas.spaces import Genotype, RNNSpace, SearchSpace, load_space
from wpl_nas.supernet import RNNSupernet, Supernet
from wpl_nas.tracking.figures import cell_figure, png_bytes, space_figure

SPEC = {"kind": "rnn", "name": "tiny-rnn", "cell": {"nodes": 4, "activations": ["tanh", "relu", "identity"]},
        "model": {"embedding": 6, "hidden": 10}}
VOCAB = 30


@pytest.fixture(scope="module")
def space() -> RNNSpace:
    s = SearchSpace.from_dict(SPEC)
    assert isinstance(s, RNNSpace)
    return s


def test_the_builtin_enas_space_has_the_papers_size():
    space = load_space("enas-rnn")
    assert isinstance(space, RNNSpace) and space.nodes == 12 and space.hidden == 1000
    # Node 1 picks an activation; node j = 2..12 picks one of j - 1 inputs and an activation.
    expected = 4 ** 12
    for j in range(2, 13):
        expected *= j - 1
    assert space.size == expected
    assert "perplexity" in space.describe()


def test_choices_inputs_and_loose_ends(space):
    assert list(space.choices) == ["n1/act", "n2/input", "n2/act", "n3/input", "n3/act", "n4/input", "n4/act"]
    assert space.choices["n4/input"] == ("1", "2", "3")
    arch = space.make({"n1/act": "tanh", "n2/input": "1", "n2/act": "relu", "n3/input": "1", "n3/act": "identity",
                       "n4/input": "3", "n4/act": "tanh"})
    assert space.inputs(arch) == {2: 1, 3: 1, 4: 3}
    assert space.loose_ends(arch) == [2, 4]


def test_suggest_parse_and_string_round_trip(space):
    assert all(isinstance(arch, Genotype) for arch in assert_round_trips(space))
    assert len(set(space.enumerate())) == space.size


@pytest.mark.parametrize(("text", "message"), [
    ("n1/act=tanh", r"missing choices \['n2/input'"),
    ("n1/act=softmax;n2/input=1;n2/act=tanh;n3/input=1;n3/act=tanh;n4/input=1;n4/act=tanh",
     "value 'softmax' of n1/act is not in space 'tiny-rnn'; valid choices: tanh, relu, identity"),
    ("n1/act=tanh;n2/input=2;n2/act=tanh;n3/input=1;n3/act=tanh;n4/input=1;n4/act=tanh",
     "value '2' of n2/input is not in space 'tiny-rnn'; valid choices: 1"),
    ("n1/act tanh", "entry 'n1/act tanh' must look like label=value"),
    ("|conv_3~0|", "must look like label=value .*; architectures of space 'tiny-rnn' look like n1/act=tanh;"),
])
def test_bad_architecture_strings_name_the_value_and_the_choices(space, text, message):
    with pytest.raises(ConfigError, match=message):
        space.parse(text)


@pytest.mark.parametrize(("change", "message"), [
    ({"cell": {"nodes": 0, "activations": ["tanh"]}}, r"'cell.nodes': must be a positive integer, but got 0"),
    ({"cell": {"nodes": 3, "activations": ["tanh", "swish"]}},
     "'cell.activations': unknown name 'swish'; valid choices: tanh, relu, identity, sigmoid"),
    ({"model": {"embedding": 4}}, r"'model': missing key\(s\) \['hidden'\]"),
    ({"kind": "rnnn"}, "unknown search space kind 'rnnn' \\(did you mean 'rnn'\\?\\)"),
])
def test_bad_space_files_are_precise_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_dict({**SPEC, **change})


def test_only_the_path_is_trained_and_the_standalone_network_matches(space):
    torch.manual_seed(0)
    net = Supernet(space, in_channels=1, num_classes=VOCAB)
    assert isinstance(net, RNNSupernet)
    x = torch.randint(0, VOCAB, (4, 7))
    rng = random.Random(3)
    for _ in range(4):
        arch = space.sample(rng)
        net.zero_grad(set_to_none=True)
        with net.use(arch):
            logits = net(x)
            assert logits.shape == (4, VOCAB, 7)
            F.cross_entropy(logits, x).backward()
        used = set(net.parameter_names_of(arch))
        trained = {n for n, p in net.named_parameters() if p.grad is not None}
        assert trained == used
        edges = {n.split(".")[4] for n in used if ".edges." in n}
        assert edges == {f"{i}->{j}" for j, i in space.inputs(arch).items()}

        assert_standalone_matches(net, arch, x)


def test_parameter_count_follows_the_cell_formula(space):
    net = Supernet(space, in_channels=1, num_classes=VOCAB)
    e, h, n = space.embedding, space.hidden, space.nodes
    edges = n * (n - 1) // 2  # one private [V, V_c] per possible edge i -> j
    assert net.count_parameters() == VOCAB * e + (e + h) * 2 * h + edges * h * 2 * h + (h * VOCAB + VOCAB)
    arch = next(space.enumerate())  # a chain 1 -> 2 -> 3 -> 4 reading node 1 each: 3 edges
    assert net.count_parameters(arch) == VOCAB * e + (e + h) * 2 * h + 3 * h * 2 * h + (h * VOCAB + VOCAB)


def test_the_cell_draws_with_and_without_an_architecture(space):
    arch = space.sample(random.Random(0))
    graph = space.dag(arch)
    assert {(i, j) for i, j in graph.edges if isinstance(j, int) and isinstance(i, int)} == \
        {(i, j) for j, i in space.inputs(arch).items()}
    assert png_bytes(cell_figure(space, arch)).startswith(b"\x89PNG")
    assert png_bytes(space_figure(space)).startswith(b"\x89PNG")

"""The contract every built-in space keeps, whatever its kind: listed with a description and a
citation; architectures that suggest, print, parse and validate back; a supernet that trains only
the chosen path and a stand-alone network that computes what the path computes."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_round_trips, assert_standalone_matches

import wpl_nas
from wpl_nas.spaces import SPACE_KINDS, RNNSpace
from wpl_nas.supernet import SUPERNETS
from wpl_nas.tracking.figures import cell_figure, png_bytes, space_figure

NAMES = list(wpl_nas.builtin_spaces())


def test_the_catalogue_has_every_space_the_docs_promise():
    assert set(NAMES) >= {"mnist1d", "nb201", "darts", "enas-micro", "enas-rnn", "mobilenet", "mlp"}


@pytest.mark.parametrize("kind", SPACE_KINDS.names())
def test_every_space_kind_has_its_network_and_a_space_in_the_catalogue(kind):
    assert SPACE_KINDS.get(kind).kind == kind
    assert issubclass(SUPERNETS.get(kind), wpl_nas.Supernet)
    assert kind in {wpl_nas.load_space(name).kind for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_a_builtin_space_describes_itself_and_round_trips_architectures(name):
    space = wpl_nas.load_space(name)
    assert space.name == name and space.description and space.citation and space.size > 1
    text = space.describe()
    assert name in text and str(next(space.enumerate())) in text
    archs = assert_round_trips(space, trials=4)
    assert len(set(archs)) > 1
    assert png_bytes(space_figure(space))[:4] == b"\x89PNG"
    assert png_bytes(cell_figure(space, archs[-1]))[:4] == b"\x89PNG"


def _small(space: wpl_nas.SearchSpace) -> wpl_nas.SearchSpace:
    """The built-in recurrent space at ENAS's hidden size of 1000 has 130M weights; the contract
    below is about structure, so it is checked on a narrow copy."""
    return dataclasses.replace(space, embedding=8, hidden=12) if isinstance(space, RNNSpace) else space


def _batch(space: wpl_nas.SearchSpace, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    if space.dims == 0:
        tokens = torch.randint(0, classes, (2, 6), generator=gen)
        return tokens, tokens.roll(-1, dims=1)
    shape = (3, 32, 32) if space.dims == 2 else (1, 40)
    return torch.randn(2, *shape, generator=gen), torch.randint(0, classes, (2,), generator=gen)


@pytest.mark.parametrize("name", NAMES)
def test_a_builtin_supernet_trains_only_the_path_and_its_standalone_network_matches(name):
    space = _small(wpl_nas.load_space(name))
    classes = 10
    x, y = _batch(space, classes)
    torch.manual_seed(0)
    net = wpl_nas.Supernet(space, in_channels=x.shape[1] if x.dim() > 2 else 1, num_classes=classes,
                           input_shape=tuple(x.shape[1:]))
    arch = space.sample(random.Random(1))
    with net.use(arch):
        F.cross_entropy(net(x), y).backward()
    path = set(net.parameter_names_of(arch))
    for param_name, param in net.named_parameters():
        if param_name not in path:
            assert param.grad is None, f"{param_name} is off the path but got a gradient"
    assert any(net.is_searchable(n) for n in path)  # every kind has weights only some candidates use
    assert_standalone_matches(net, arch, x)
    assert net.count_parameters(arch) <= net.count_parameters()


@pytest.mark.parametrize(("arch", "params"), [
    # NAS-Bench-201's CIFAR-10 table lists these as 0.073306 MB (a cell without weights: the
    # skeleton alone) and 1.531546 MB (every edge nor_conv_3x3, the largest network).
    ("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|", 73_306),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|", 1_531_546),
])
def test_nb201_parameter_counts_match_the_benchmark(arch, params):
    space = wpl_nas.load_space("nb201")
    net = wpl_nas.Supernet(space, in_channels=3, num_classes=10)
    assert net.count_parameters(space.parse(arch)) == params
    assert net.standalone(space.parse(arch)).count_parameters() == params

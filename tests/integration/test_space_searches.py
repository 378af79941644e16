"""A whole search on each kind of space (tiny ones, MNIST-1D, one epoch)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import params_by_formula, search_tiny

from wpl_nas.spaces import load_space

MLP_TINY = """\
kind: mlp
name: tiny-mlp
layers: 2
widths: [16, 32]
activations: [relu, tanh]
"""


@pytest.mark.slow
def test_a_wpl_search_of_an_mlp_space(tmp_path: Path, mnist1d, data_dir):
    path = tmp_path / "tiny-mlp.yaml"
    path.write_text(MLP_TINY)
    result = search_tiny(path, data_dir, tmp_path / "runs")
    space = load_space(path)
    inputs = math.prod(mnist1d.input_shape)
    for t in result.study.get_trials():
        arch = space.parse(t.user_attrs["arch"])
        sizes = [inputs, *(p.width for p in space.picks(arch))]
        assert t.user_attrs["params"] == params_by_formula(sizes, mnist1d.num_classes)


DARTS_TINY_1D = """\
kind: darts
name: tiny-darts-1d
description: a tiny 1-D DARTS cell space for a fast end-to-end search
dims: 1
skeleton: {channels: 4, cells: 3}
cell:
  nodes: 2
  ops: [none, skip_connect, sep_conv_3]
  output: loose_ends
"""


def test_a_1d_darts_space_searches_mnist1d_with_wpl(tmp_path: Path, mnist1d, data_dir):
    path = tmp_path / "tiny-darts-1d.yaml"
    path.write_text(DARTS_TINY_1D)
    result = search_tiny(path, data_dir, tmp_path / "runs")
    assert (result.run_dir / "checkpoints" / "last.pt").is_file()


MOBILENET_TINY_1D = """\
kind: mobilenet
name: tiny-mb1d
dims: 1
stem_channels: 8
stages:
  - {channels: 8, stride: 1, depth: [1], kernel: [3], expand: [1]}
  - {channels: 16, stride: 2, depth: [1, 2], kernel: [3, 5], expand: [2, 3]}
"""


@pytest.mark.slow
def test_a_wpl_search_of_a_mobilenet_space(tmp_path: Path, mnist1d, data_dir):
    path = tmp_path / "tiny-mb1d.yaml"
    path.write_text(MOBILENET_TINY_1D)
    result = search_tiny(path, data_dir, tmp_path / "runs")
    space = load_space(path)
    assert all(t.user_attrs["params"] > 0 for t in result.study.trials)
    assert result.best_arch in set(space.enumerate())

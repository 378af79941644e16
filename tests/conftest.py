"""Shared fixtures: a tiny 1-D space and MNIST-1D generated once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import wpl_nas

TINY_SPACE = """\
name: tiny1d
description: a tiny 1-D cell space for fast tests
citation: wpl-nas tests
dims: 1
skeleton:
  stem_channels: 8
  stages:
    - {channels: 8, cells: 1}
    - {channels: 16, cells: 1}
cell:
  nodes: 4
  edges: all
  ops: [none, skip_connect, conv_5]
"""


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """Run the tests' tiny tensors on one thread: on a busy 2-core machine OpenMP threads wait
    on each other and a 1 ms convolution can take tens of milliseconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a tiny space YAML (same grammar as mnist1d, 8/16 channels, one cell per stage)."""
    path = tmp_path_factory.mktemp("spaces") / "tiny1d.yaml"
    path.write_text(TINY_SPACE)
    return path


@pytest.fixture(scope="session")
def tiny_space(tiny_space_file: Path) -> wpl_nas.SearchSpace:
    return wpl_nas.load_space(tiny_space_file)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder shared by the session, so MNIST-1D is generated once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def mnist1d(data_dir: Path) -> wpl_nas.DataBundle:
    return wpl_nas.load_dataset("mnist1d", data_dir=data_dir)


def make_trainer(space: wpl_nas.SearchSpace, data: wpl_nas.DataBundle, strategy: str = "naive", *,
                 options: object = None, epochs: int = 1, lr: float = 0.05, seed: int = 0,
                 train_samples: int = 1024) -> wpl_nas.CandidateTrainer:
    """A trainer on a fresh supernet of ``space`` with a subset of the training data (fast)."""
    import torch
    from torch.utils.data import TensorDataset

    net = wpl_nas.build_supernet(space, data, seed=seed)
    strat = wpl_nas.create_strategy(strategy, net, options)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    train = TensorDataset(*(t[:train_samples] for t in data.train.tensors))  # type: ignore[attr-defined]
    val = data.val
    return wpl_nas.CandidateTrainer(
        net, strat, train_set=train, held_out=val, eval_set=tuple(val.tensors[:2]),  # type: ignore[attr-defined]
        optimizer=opt, batch_size=64, epochs=epochs, grad_clip=5.0, eval_batch_size=256, seed=seed)


@pytest.fixture
def trainer_factory():
    return make_trainer

"""Shared fixtures: a tiny 1-D space and MNIST-1D generated once per session."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import numpy as np
import pytest
import torch

import wpl_nas

#: The device of the trainers and searches the helpers below build, and of the fast-path tests:
#: cpu unless ``WPL_NAS_TEST_DEVICE`` names another (benchmarks/gpu_check.py sets it to cuda).
TEST_DEVICE = os.environ.get("WPL_NAS_TEST_DEVICE", "cpu")

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
    from types import SimpleNamespace

    from torch.utils.data import TensorDataset

    training = SimpleNamespace(lr=lr, momentum=0.9, weight_decay=0.0, batch_size=64, grad_clip=5.0, eval_batch_size=256)
    parts = wpl_nas.assemble(wpl_nas.build_supernet(space, data, seed=seed), training, device=TEST_DEVICE,
                             strategy=strategy, strategy_options=options)
    train = TensorDataset(*(t[:train_samples] for t in data.train.tensors))  # type: ignore[attr-defined]
    val = data.val
    eval_set = tuple(t.to(TEST_DEVICE) for t in val.tensors[:2])  # type: ignore[attr-defined]
    return parts.trainer(train_set=train, held_out=val, eval_set=eval_set, epochs=epochs, seed=seed)


@pytest.fixture
def trainer_factory():
    return make_trainer


def assert_standalone_matches(net: wpl_nas.Supernet, arch: wpl_nas.Architecture, x: object) -> wpl_nas.Supernet:
    """``net.standalone(arch)`` holds exactly the path's parameters and, in evaluation mode,
    computes what the supernet computes on that path, and so does its ``torch.export`` program.
    Returns the stand-alone network (in evaluation mode); ``net`` keeps its mode."""
    import torch

    alone = net.standalone(arch).eval()
    assert alone.count_parameters(arch) == net.count_parameters(arch)
    was_training = net.training
    net.eval()
    with torch.no_grad(), net.use(arch):
        expected = net(x)
    net.train(was_training)
    torch.testing.assert_close(alone(x), expected)
    program = torch.export.export(alone, (x,))
    torch.testing.assert_close(program.module()(x), expected)
    return alone


def search_tiny(space_file: Path, data_dir: Path, runs_dir: Path, **options: object) -> wpl_nas.SearchResult:
    """A 2-trial WPL search of ``space_file`` on MNIST-1D (1 epoch); every trial completes and its
    Optuna parameters are its architecture's choices."""
    import optuna

    settings = {"trials": 2, "epochs": 1, "batch_size": 128, "device": TEST_DEVICE, "strategy": "wpl",
                "study_name": space_file.stem, **options}
    config = wpl_nas.SearchConfig(space=str(space_file), data_dir=str(data_dir), runs_dir=str(runs_dir), **settings)
    result = wpl_nas.run_search(config, progress=False, command=["test"])
    space = wpl_nas.load_space(space_file)
    trials = result.study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * settings["trials"]
    for t in trials:
        assert t.params == dict(space.parse(t.user_attrs["arch"])) and 0.0 <= t.value <= 1.0
    assert result.best_arch is not None
    return result


def assert_round_trips(space: wpl_nas.SearchSpace, *, trials: int = 5) -> list[wpl_nas.Architecture]:
    """Architectures a real Optuna study suggests: one parameter per choice, equal to the
    architecture's values, and each printed string parses back (through the space and through
    ``Architecture.parse``) to the same architecture. Returns them."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    archs = []
    for _ in range(trials):
        trial = study.ask()
        arch = space.suggest(trial)
        assert trial.params == {label: arch[label] for label in space.choices}
        assert space.parse(str(arch)) == arch == wpl_nas.Architecture.parse(str(arch)) == space.validate(arch)
        study.tell(trial, 0.0)
        archs.append(arch)
    return archs


def hparams_table(logdir: Path) -> dict[str, dict[str, float]]:
    """What TensorBoard's HPARAMS tab shows for the log folder ``logdir``, computed by TensorBoard's
    own hparams backend from the event files: ``{session (run): {metric tag: value}}``."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.context import RequestContext
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    runs = plugin_event_multiplexer.EventMultiplexer().AddRunsFromDirectory(str(logdir))
    runs.Reload()
    context = base_plugin.TBContext(data_provider=data_provider.MultiplexerDataProvider(runs, str(logdir)),
                                    multiplexer=runs, logdir=str(logdir))
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=1000,
                                               allowed_statuses=[api_pb2.STATUS_SUCCESS])
    response = list_session_groups.Handler(RequestContext(), backend_context.Context(context), "", request).run()
    return {g.name: {m.name.tag: m.value for m in g.metric_values} for g in response.session_groups}


def params_by_formula(sizes: list[int], classes: int) -> int:
    """``in * out + out`` for every linear layer of a chain of ``sizes`` then the head."""
    sizes = [*sizes, classes]
    return sum(a * b + b for a, b in itertools.pairwise(sizes))


OWN_RECIPE = wpl_nas.Recipe(lr=0.05, weight_decay=5e-4, batch_size=64)


def blobs(n: int = 500, classes: int = 4, features: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A feature table of ``classes`` Gaussian blobs, as a user would hold it (NumPy, float64)."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % classes
    return 2.0 * rng.standard_normal((classes, features))[labels] + rng.standard_normal((n, features)), labels


@pytest.fixture(scope="session")
def own_data() -> str:
    """A dataset registered by function, as a user's module does it; its loader takes only what it uses."""

    @wpl_nas.register_dataset("test-own-blobs", recipe=OWN_RECIPE)
    def load(*, val_fraction: float, seed: int) -> wpl_nas.DataBundle:
        x, y = blobs()
        return wpl_nas.DataBundle.from_tensors(x, y, val_fraction=val_fraction, seed=seed)

    return "test-own-blobs"


TINY_2D_SPACE = """\
name: tiny2d
description: a tiny 2-D cell space for fast tests
citation: wpl-nas tests
dims: 2
skeleton:
  stem_channels: 4
  stages:
    - {channels: 4, cells: 1}
    - {channels: 8, cells: 1}
cell:
  nodes: 3
  edges: all
  ops: [none, skip_connect, nor_conv_3x3]
"""


def write_image_folder(root: Path, *, test: bool = True, classes: int = 3, seed: int = 0) -> Path:
    """An ``imagefolder`` data directory: ``root/train/class<c>/<i>.png``, 8 images per class (and
    ``root/test/...``, 3 per class), 12x12 RGB noise, brighter for higher classes (so they can be told
    apart), every image different."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", 8), ("test", 3)) if test else (("train", 8),):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = (rng.integers(0, 60, (12, 12, 3)) + 80 * c).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@contextlib.contextmanager
def counting_decodes() -> Iterator[list[int]]:
    """Count the images this process decodes (calls of ``ImageFiles.read``, the one decoding path),
    watched with ``sys.setprofile``: the code runs as it is, nothing is replaced."""
    from wpl_nas.data._imagefolder import ImageFiles

    calls = [0]
    code = ImageFiles.read.__code__

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is code:
            calls[0] += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield calls
    finally:
        sys.setprofile(previous)


@pytest.fixture
def write_images():
    return write_image_folder


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny imagefolder directory with train/ and test/ (see :func:`write_image_folder`)."""
    return write_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def tiny_2d_space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spaces2d") / "tiny2d.yaml"
    path.write_text(TINY_2D_SPACE)
    return path

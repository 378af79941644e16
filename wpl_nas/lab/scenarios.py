"""Forgetting scenarios, registered by name: what is trained, in which order, on which data.

A scenario turns a :class:`~wpl_nas.lab.config.LabConfig` and a data set into :class:`Plan` s
(one per variant, e.g. per shared depth of the two-model experiment). A plan is a supernet
shape and the :class:`Model` s trained on it one after another; the runner trains them with
each strategy and records how much every earlier model retains. Adding a scenario is one
subclass of :class:`Scenario` registered in :data:`SCENARIOS`.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from wpl_nas.data import DataBundle
from wpl_nas.data._bundle import in_memory, take
from wpl_nas.errors import ConfigError
from wpl_nas.lab.config import LabConfig, parse_floats, parse_ints
from wpl_nas.registry import Registry
from wpl_nas.spaces import Architecture, CellSpace, SearchSpace, load_space

__all__ = ["SCENARIOS", "SCENARIO_OPTIONS", "Model", "Plan", "Scenario", "chain_space", "default_arch",
           "first_tensors"]

#: Options of :class:`LabConfig` that belong to some scenarios only (None there: not given).
SCENARIO_OPTIONS = ("space", "arch", "candidates", "tasks", "shared", "a_fraction", "a_epochs", "channels")


@dataclass
class Model:
    """One model of a plan: a candidate architecture and the data it trains and is scored on.

    Attributes:
        label: How reports name it (``"A"``, ``"candidate 3"``, ``"task 2"``).
        arch: Its path through the supernet, including its output head.
        train: Its training data.
        held_out: Held-out training data for consolidation (Fisher and the like), never the test split.
        eval_set: ``(x, y)``, the fixed evaluation subset every score of this model uses.
        epochs: Its training epochs.
        chance: Accuracy of guessing (1 / its number of classes): A_R in the forgetting ratio.
    """

    label: str
    arch: Architecture
    train: TensorDataset
    held_out: TensorDataset
    eval_set: tuple[Tensor, Tensor]
    epochs: int
    chance: float


@dataclass
class Plan:
    """One variant of a scenario: a supernet and the models trained on it in order.

    Attributes:
        variant: Folder-safe name of the variant (``"shared2"``; ``""`` when the scenario has one).
        params: The variant's table columns (``{"shared": 2, "a_fraction": 1.0}``).
        space: The search space the supernet is built from.
        num_classes: Outputs of every head.
        heads: Output heads of the supernet (one per task in task-incremental scenarios).
        models: What is trained, in order; the first one(s) are those whose forgetting is measured.
    """

    variant: str
    params: dict[str, Any]
    space: SearchSpace
    num_classes: int
    heads: int
    models: list[Model] = field(default_factory=list)


class Scenario:
    """Base class of scenarios.

    The runner calls :meth:`resolve` once (after loading the data, before writing anything),
    then :meth:`plans` once per seed.
    """

    #: Registry name.
    name: ClassVar[str] = ""
    #: One paragraph for ``wpl-nas forgetting --help``.
    summary: ClassVar[str] = ""
    #: How reports name the first model(s), the last one, and the first one (whose curve is probed).
    first_label: ClassVar[str] = "earlier"
    last_label: ClassVar[str] = "last"
    probed_label: ClassVar[str] = "model 0"
    #: The scenario-specific options it accepts (from :data:`SCENARIO_OPTIONS`), with their defaults.
    defaults: ClassVar[dict[str, Any]] = {}

    def resolve(self, config: LabConfig, data: DataBundle) -> LabConfig:
        """``config`` with this scenario's defaults filled in, checked against ``data``.

        Raises:
            ConfigError: an option of another scenario was given, or a value does not fit the data.
        """
        for option in SCENARIO_OPTIONS:
            if getattr(config, option) is not None and option not in self.defaults:
                owners = [n for n in SCENARIOS if option in SCENARIOS.get(n).defaults]
                raise ConfigError(
                    f"option {option!r} (--{option.replace('_', '-')}) does not apply to scenario {self.name!r}; "
                    f"it is an option of {', '.join(owners)}")
        missing = {k: v for k, v in self.defaults.items() if getattr(config, k) is None}
        if "space" in missing:
            missing["space"] = "mnist1d" if _dims(data) == 1 else "nb201"
        return config.replace(**missing) if missing else config

    def plans(self, config: LabConfig, data: DataBundle, seed: int) -> list[Plan]:
        """The variants to run for ``seed`` (``config`` is resolved)."""
        raise NotImplementedError


#: Scenarios by name; plugins add theirs through the entry point group ``wpl_nas.scenarios``.
SCENARIOS: Registry[type[Scenario]] = Registry("scenario", entry_points="wpl_nas.scenarios")


# --- data helpers ----------------------------------------------------------------------------
def first_tensors(dataset: Any, name: str) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of a split held in memory, normalised (uint8 images become float32 here: the lab splits
    its data by class into tasks of its own)."""
    if not in_memory(dataset):
        raise TypeError(f"dataset {name!r} must load into memory (TensorDatasets of (inputs, labels), or uint8 "
                        "ImageTensors; see wpl_nas.data): the lab does not stream data from files")
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0], dataset.tensors[1]  # as they are, no copy
    return take(dataset, torch.arange(len(dataset)))


def _dims(data: DataBundle) -> int:
    return len(data.input_shape) - 1


def _splits(config: LabConfig, data: DataBundle) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(train, val)`` as tensors, the training split cut to ``train_samples``."""
    x, y = first_tensors(data.train, data.name)
    if config.train_samples:
        x, y = x[: config.train_samples], y[: config.train_samples]
    return (x, y), first_tensors(data.val, data.name)


def _model(label: str, arch: Architecture, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], *,
           config: LabConfig, epochs: int, classes: int) -> Model:
    n_eval = config.eval_samples or len(val[1])
    if len(train[1]) == 0 or len(val[1]) == 0:
        raise ConfigError(f"{label} has no training or validation samples; raise train_samples or val_fraction")
    return Model(label, arch, TensorDataset(*train), TensorDataset(*val),
                 (val[0][:n_eval], val[1][:n_eval]), epochs, 1.0 / classes)


def _kernel(op: str) -> int:
    digits = re.findall(r"\d+", op)
    return int(digits[0]) if digits else 0


def default_arch(space: SearchSpace) -> Architecture:
    """Every edge of the cell runs the space's largest convolution (its first non-``none`` op
    if it has no convolution): a reasonable all-conv architecture for task-incremental runs.
    Other kinds of space take the last value of every choice (their largest, by convention)."""
    if not isinstance(space, CellSpace):
        return space.make({label: values[-1] for label, values in space.choices.items()})
    ops: dict[tuple[int, int], str] = {}
    for s, d in space.edges:
        choices = space.graph.edges[s, d]["ops"]
        convs = [op for op in choices if "conv" in op]
        others = [op for op in choices if op != "none"]
        ops[s, d] = max(convs, key=_kernel) if convs else (others[0] if others else choices[0])
    return Architecture.from_ops(ops)


# --- two-model -------------------------------------------------------------------------------
#: Ops of the two-model chain: ``conv_5`` and ``nor_conv_5x5`` build identical layers (ReLU ->
#: conv k=5 -> BN) with separate weights, so B can run A's layer or a private copy of it on any edge.
CHAIN_OPS = ("skip_connect", "conv_5", "nor_conv_5x5")
CHAIN_EDGES = 5  # nodes 0..5: B's 5 conv layers after the stem; A uses 3 of them and skips the rest
A_CONVS = 3


def chain_space(*, channels: int, dims: int) -> SearchSpace:
    """The two-model experiment's space: the stem (layer 1) and one cell that is a chain of
    ``CHAIN_EDGES`` edges ``i -> i+1``, each ``skip_connect``, A's ``conv_5`` or B's ``nor_conv_5x5``."""
    return SearchSpace.from_dict({
        "name": "two-model-chain",
        "description": f"the WPL paper's two-model experiment: stem + a chain of {CHAIN_EDGES} layers",
        "citation": "Benyahia et al., Overcoming Multi-Model Forgetting, ICML 2019 (Fig. 1)",
        "dims": dims,
        "skeleton": {"stem_channels": channels, "stages": [{"channels": channels, "cells": 1}]},
        "cell": {"nodes": CHAIN_EDGES + 1, "edges": [[i, i + 1] for i in range(CHAIN_EDGES)], "ops": list(CHAIN_OPS)},
    })


def model_a() -> Architecture:
    """A: the stem and A's own convolutions on the first 3 edges, then identity (4 layers), head 0."""
    return Architecture.from_ops({(i, i + 1): "conv_5" if i < A_CONVS else "skip_connect" for i in range(CHAIN_EDGES)},
                                 head=0)


def model_b(shared: int) -> Architecture:
    """B: the stem and 5 convolutions (6 layers), head 1. It shares A's first ``shared`` layers:
    the stem (always) and A's ``conv_5`` on the first ``shared - 1`` edges; its other layers are its own."""
    return Architecture.from_ops(
        {(i, i + 1): "conv_5" if i < shared - 1 else "nor_conv_5x5" for i in range(CHAIN_EDGES)}, head=1)


@SCENARIOS.register("two-model")
class TwoModel(Scenario):
    name = "two-model"
    summary = (
        "The WPL paper's experiment (Benyahia et al. 2019, Fig. 1). Model A (4 layers) is trained; then model B "
        "(6 layers), which shares A's first 1, 2 or 3 layers (--shared), is trained while A's accuracy is probed. "
        "--a-fraction below 1 under-trains A, as in the paper's weaker-A panels. A and B have their own heads.")
    first_label = "A"
    last_label = "B"
    probed_label = "A"
    defaults: ClassVar[dict[str, Any]] = {"shared": "1,2,3", "a_fraction": "1", "a_epochs": 0, "channels": 32}

    def resolve(self, config: LabConfig, data: DataBundle) -> LabConfig:
        config = super().resolve(config, data)
        if _dims(data) not in (1, 2):
            raise ConfigError(f"dataset {data.name!r} has per-sample shape {data.input_shape}; "
                              "the two-model chain needs 1-D (C, L) or 2-D (C, H, W) inputs")
        return config

    def plans(self, config: LabConfig, data: DataBundle, seed: int) -> list[Plan]:
        assert config.shared is not None and config.a_fraction is not None and config.channels is not None
        space = chain_space(channels=config.channels, dims=_dims(data))
        train, val = _splits(config, data)
        a_epochs = config.a_epochs or config.epochs
        classes = data.num_classes
        plans = []
        for shared in parse_ints(config.shared, "shared", choices=range(1, A_CONVS + 2)):
            for fraction in parse_floats(config.a_fraction, "a_fraction"):
                # The training split is in random order (see make_bundle): its head is a random subset.
                n_a = max(1, round(fraction * len(train[1])))
                models = [
                    _model("A", model_a(), (train[0][:n_a], train[1][:n_a]), val, config=config, epochs=a_epochs,
                           classes=classes),
                    _model("B", model_b(shared), train, val, config=config, epochs=config.epochs, classes=classes),
                ]
                variant = f"shared{shared}" + (f"-a{fraction:g}" if fraction != 1 else "")
                plans.append(Plan(variant, {"shared": shared, "a_fraction": fraction}, space, classes, 2, models))
        return plans


# --- sequence --------------------------------------------------------------------------------
@SCENARIOS.register("sequence")
class Sequence(Scenario):
    name = "sequence"
    summary = (
        "K candidates (--candidates) sampled from --space with the seed are trained one after another on the "
        "shared supernet, as in a search; after each, every earlier candidate is re-scored: the full retention "
        "matrix. All candidates share one head.")
    first_label = "earlier candidates"
    last_label = "last candidate"
    probed_label = "candidate 0"
    defaults: ClassVar[dict[str, Any]] = {"space": None, "candidates": 6}

    def resolve(self, config: LabConfig, data: DataBundle) -> LabConfig:
        config = super().resolve(config, data)
        assert config.space is not None and config.candidates is not None
        space = load_space(config.space)
        space.check_data(data.name, data.input_shape)
        if config.candidates > space.size:
            raise ConfigError(f"candidates={config.candidates} exceeds the {space.size} architectures of "
                              f"space {space.name!r}")
        return config

    def plans(self, config: LabConfig, data: DataBundle, seed: int) -> list[Plan]:
        assert config.space is not None and config.candidates is not None
        space = load_space(config.space)
        train, val = _splits(config, data)
        rng = random.Random(seed)
        archs: list[Architecture] = []
        while len(archs) < config.candidates:  # distinct candidates; the space has enough (resolve)
            arch = space.sample(rng)
            if arch not in archs:
                archs.append(arch)
        models = [_model(f"candidate {k}", arch, train, val, config=config, epochs=config.epochs,
                         classes=data.num_classes) for k, arch in enumerate(archs)]
        return [Plan("", {}, space, data.num_classes, 1, models)]


# --- task-incremental: split and permuted --------------------------------------------------------
class _TaskIncremental(Scenario):
    """One fixed architecture for every task, head t for task t."""

    first_label = "earlier tasks"
    last_label = "last task"
    probed_label = "task 0"
    defaults: ClassVar[dict[str, Any]] = {"space": None, "arch": None, "tasks": 5}

    def resolve(self, config: LabConfig, data: DataBundle) -> LabConfig:
        config = super().resolve(config, data)
        assert config.space is not None
        space = load_space(config.space)
        space.check_data(data.name, data.input_shape)
        if config.arch is not None:
            space.parse(config.arch)
        return config

    def arch(self, config: LabConfig) -> tuple[SearchSpace, Architecture]:
        assert config.space is not None
        space = load_space(config.space)
        return space, (space.parse(config.arch) if config.arch is not None else default_arch(space))


@SCENARIOS.register("split")
class Split(_TaskIncremental):
    name = "split"
    summary = (
        "Task-incremental split benchmark (split MNIST): the data set's classes are divided into --tasks groups "
        "of consecutive labels, remapped to 0..c-1 per task; task t trains head t of one fixed architecture "
        "(--arch, default all-conv).")

    def resolve(self, config: LabConfig, data: DataBundle) -> LabConfig:
        config = super().resolve(config, data)
        assert config.tasks is not None
        n = data.num_classes
        if n % config.tasks or config.tasks > n:
            valid = [t for t in range(2, n + 1) if n % t == 0]
            raise ConfigError(f"tasks={config.tasks} does not divide the {n} classes of dataset {data.name!r}; "
                              f"valid choices: {', '.join(map(str, valid))}")
        return config

    def plans(self, config: LabConfig, data: DataBundle, seed: int) -> list[Plan]:
        assert config.tasks is not None
        space, arch = self.arch(config)
        train, val = _splits(config, data)
        per_task = data.num_classes // config.tasks
        models = []
        for t in range(config.tasks):
            low = t * per_task

            def task(split: tuple[Tensor, Tensor], low: int = low) -> tuple[Tensor, Tensor]:
                keep = (split[1] >= low) & (split[1] < low + per_task)
                return split[0][keep], split[1][keep] - low

            classes = "-".join(map(str, range(low, low + per_task)))
            models.append(_model(f"task {t} (classes {classes})", arch.with_head(t), task(train), task(val),
                                 config=config, epochs=config.epochs, classes=per_task))
        return [Plan("", {}, space, per_task, config.tasks, models)]


@SCENARIOS.register("permuted")
class Permuted(_TaskIncremental):
    name = "permuted"
    summary = (
        "Task-incremental permuted benchmark (permuted MNIST): task t sees every class with its input features "
        "shuffled by a fixed permutation drawn from the seed; task t trains head t of one fixed architecture.")

    def plans(self, config: LabConfig, data: DataBundle, seed: int) -> list[Plan]:
        assert config.tasks is not None
        space, arch = self.arch(config)
        train, val = _splits(config, data)
        features = math.prod(data.input_shape)  # C·L or C·H·W
        models = []
        for t in range(config.tasks):
            perm = torch.randperm(features, generator=torch.Generator().manual_seed(seed * 100_003 + t))

            def task(split: tuple[Tensor, Tensor], perm: Tensor = perm) -> tuple[Tensor, Tensor]:
                x = split[0].flatten(1)[:, perm].reshape(split[0].shape)
                return x, split[1]

            models.append(_model(f"task {t}", arch.with_head(t), task(train), task(val), config=config,
                                 epochs=config.epochs, classes=data.num_classes))
        return [Plan("", {}, space, data.num_classes, config.tasks, models)]

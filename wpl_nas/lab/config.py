"""Configuration of the forgetting lab (``wpl-nas forgetting``): every default in one place, YAML in and out.

A :class:`LabConfig` comes from defaults, then an optional YAML file, then command-line flags,
exactly like the search's :class:`~wpl_nas.config.SearchConfig`; the strategies' option sections
are the same ones (``--wpl-alpha 300`` <-> ``wpl: {alpha: 300}``), so a strategy is tuned the same
way in both commands. Options that belong to one scenario default to None ("the scenario's
default"); the runner refuses them for the other scenarios instead of silently ignoring them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from wpl_nas.config import CHANNELS_LAST, PRECISIONS
from wpl_nas.configs import Config, opt
from wpl_nas.errors import ConfigError
from wpl_nas.threads import DEFAULT_THREADS, THREADS_HELP

__all__ = ["LabConfig", "load_lab_config", "parse_floats", "parse_ints"]


@dataclass
class LabConfig(Config):
    """Everything ``wpl-nas forgetting`` needs. The defaults run the WPL paper's two-model
    experiment on MNIST-1D with naive weight sharing and WPL in about a minute on a 2-core CPU.

    Besides the fields below, it holds one section per registered strategy with options
    (:attr:`~wpl_nas.configs.Config.sections`: ``wpl``, ``ewc``, ...), top-level keys in YAML
    (``wpl: {alpha: 300}``) and flags on the command line (``--wpl-alpha``), as in a search.
    """

    # What to measure.
    scenario: str = opt("two-model", "Scenario: two-model, sequence, split or permuted (see above).")
    strategies: str = opt(
        "naive,wpl", "Comma-separated strategies to compare (each a registered name or two joined by '+', "
        "e.g. wpl+distill), or 'all' for every registered strategy.")
    dataset: str = opt("mnist1d", "Data set: mnist1d (generated locally), mnist, fashion_mnist, cifar10, cifar100, "
                       "ptb, or one registered with wpl_nas.register_dataset (e.g. by an installed plugin).")
    data_dir: str = opt("data", "Where torchvision data sets live (or are downloaded to) and MNIST-1D is cached.")
    download: bool = opt(False, "Download torchvision data sets into --data-dir if missing.")
    val_fraction: float = opt(0.2, "Share of the training data held out for scores, Fisher and the like.")
    train_samples: int = opt(0, "Train on the first N samples of the training split only (0: all of it).")
    # Scenario-specific options (None: the scenario's default; refused by scenarios they do not apply to).
    space: str | None = opt(
        None, "sequence, split, permuted: search space, a built-in name or a .yaml path "
        "[default: mnist1d for 1-D data, nb201 for images].")
    arch: str | None = opt(
        None, "split, permuted: the one architecture all tasks share, as an architecture string "
        "[default: every edge the space's largest convolution].")
    candidates: int | None = opt(None, "sequence: candidates sampled from the space and trained in turn [default: 6].")
    tasks: int | None = opt(
        None, "split, permuted: number of tasks; split needs it to divide the number of classes [default: 5].")
    shared: str | None = opt(
        None, "two-model: comma-separated numbers of A's first layers that B shares, each in 1..4 "
        "[default: 1,2,3].")
    a_fraction: str | None = opt(
        None, "two-model: comma-separated shares of the training data A trains on; below 1, A is "
        "under-trained, as in the WPL paper's weaker-A panels [default: 1].")
    a_epochs: int | None = opt(None, "two-model: epochs of A (0: --epochs) [default: 0].")
    channels: int | None = opt(None, "two-model: channels of every layer of A and B [default: 32].")
    # How each model trains.
    epochs: int = opt(2, "Training epochs per model (candidate, task).")
    batch_size: int = opt(64, "Training batch size.")
    lr: float = opt(0.05, "SGD learning rate of the shared weights.")
    momentum: float = opt(0.9, "SGD momentum.")
    weight_decay: float = opt(1e-4, "SGD weight decay.")
    grad_clip: float = opt(5.0, "Clip the global gradient norm to this (0: off).")
    # How models are scored.
    eval_samples: int = opt(
        500, "Size of each model's fixed validation subset used for every score and probe (0: all of it).")
    eval_batch_size: int = opt(256, "Evaluation batch size (batch norm uses batch statistics, so keep it fixed).")
    probe_every: int = opt(
        0, "Score the first model every N training steps of the later ones (the retention curve; "
        "0: about 20 points per later model).")
    # Repetitions, outputs and hardware.
    seeds: int = opt(1, "Repeat with seeds --seed .. --seed + N - 1 and report mean ± std.")
    seed: int = opt(0, "Base seed for weights, data order, sampled candidates and permutations.")
    name: str | None = opt(None, "Run folder name under --runs-dir [default: <scenario>-<dataset>].")
    runs_dir: str = opt("runs", "Parent folder of run folders.")
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps.")
    # One thread by default, as every command (wpl_nas.threads): the lab's models are small, so extra
    # threads gain little, and on a busy 2-core machine two threads waiting on each other made the
    # default run ~9x slower (measured).
    threads: int = opt(DEFAULT_THREADS, THREADS_HELP)
    # As in a search (wpl_nas.training.precision): auto keeps CPU runs in float32, unchanged.
    precision: str = opt("auto", "Precision of forward passes (training, scores, Fisher/importance): auto (bf16 "
                                 "autocast on a CUDA device that supports it, else fp32), fp32, bf16 or fp16.",
                         choices=PRECISIONS)
    channels_last: str = opt("auto", "channels_last memory format for 2-D (image) spaces: auto (on for CUDA, off "
                                     "elsewhere), on or off.", choices=CHANNELS_LAST)

    strategy_registry_module = "wpl_nas.strategies.registry"  # its strategies are the sections
    positive = ("epochs", "batch_size", "eval_batch_size", "seeds", "channels")
    non_negative = ("lr", "momentum", "weight_decay", "grad_clip", "eval_samples", "probe_every", "train_samples",
                    "threads", "a_epochs")
    open_unit = ("val_fraction",)
    #: The command line a run folder's ``config.yaml`` records: skipped, so ``--config runs/<name>/config.yaml``
    #: reruns a lab run.
    record_keys = ("command",)
    #: Fields that take comma-separated lists (YAML may also give a list or a single number).
    LIST_FIELDS: ClassVar[tuple[str, ...]] = ("shared", "a_fraction")

    # --- derived ------------------------------------------------------------------------
    @property
    def run_name(self) -> str:
        return self.name or f"{self.scenario}-{Path(self.dataset).stem}"

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run_name

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    # --- checks -------------------------------------------------------------------------
    def validate(self) -> LabConfig:
        """Check every value that needs no data or registry; return self.

        Names (scenario, strategies, dataset, space, architecture) and what depends on the data
        (``tasks`` dividing the classes) are checked by :func:`wpl_nas.lab.run_lab` before
        anything is written.

        Raises:
            ConfigError: the first bad value, naming it.
        """
        super().validate()
        for name in ("candidates", "tasks"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ConfigError(f"{name} must be >= 2, but got {name}={value!r}")
        if not self.strategies.strip():
            raise ConfigError("strategies must name at least one strategy, but got strategies=''")
        if self.shared is not None:
            parse_ints(self.shared, "shared", choices=range(1, 5))
        if self.a_fraction is not None:
            for value in parse_floats(self.a_fraction, "a_fraction"):
                if not 0.0 < value <= 1.0:
                    raise ConfigError(f"a_fraction values must be in (0, 1], but got {value!r} "
                                      f"in a_fraction={self.a_fraction!r}")
        return self

    @classmethod
    def coerce(cls, name: str, value: Any, where: str) -> Any:
        """As :meth:`Config.coerce`, except that a list field may be given as a list or a single number."""
        if name in cls.LIST_FIELDS:
            if isinstance(value, list) and value and all(_is_number(v) for v in value):
                value = ",".join(str(v) for v in value)
            elif _is_number(value):
                value = str(value)
        return super().coerce(name, value, where)


def load_lab_config(path: str | Path) -> LabConfig:
    """Read a YAML lab config (any subset of the keys of :class:`LabConfig`).

    Raises:
        ConfigError: missing file, malformed YAML, not a mapping, unknown key or wrong type;
            the message names the file and the key.
    """
    return LabConfig.load(path)


def parse_ints(text: str, name: str, *, choices: range | None = None) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; no repeats, each in ``choices`` if given.

    Raises:
        ConfigError: not a comma-separated list of integers, a repeat, or a value outside ``choices``.
    """
    valid = f"; valid choices: {', '.join(map(str, choices))}" if choices is not None else ""
    try:
        values = [int(item) for item in text.split(",")]
    except ValueError:
        raise ConfigError(
            f"{name} must be a comma-separated list of integers, but got {name}={text!r}{valid}") from None
    for value in values:
        if choices is not None and value not in choices:
            raise ConfigError(f"{name} value {value} in {name}={text!r} is out of range{valid}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{name} lists a value twice: {name}={text!r}")
    return values


def parse_floats(text: str, name: str) -> list[float]:
    """``"1,0.1"`` -> ``[1.0, 0.1]``, no repeats.

    Raises:
        ConfigError: not a comma-separated list of finite numbers, or a repeat.
    """
    try:
        values = [float(item) for item in text.split(",")]
    except ValueError:
        raise ConfigError(f"{name} must be a comma-separated list of numbers, but got {name}={text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{name} values must be finite numbers, but got {name}={text!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{name} lists a value twice: {name}={text!r}")
    return values


# --- helpers -------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

"""Configuration of the forgetting lab (``wpl-nas forgetting``): every default in one place, YAML in and out.

A :class:`LabConfig` comes from defaults, then an optional YAML file, then command-line flags,
exactly like the search's :class:`~wpl_nas.config.SearchConfig`; the strategies' option sections
are the same ones (``--wpl-alpha 300`` <-> ``wpl: {alpha: 300}``), so a strategy is tuned the same
way in both commands. Options that belong to one scenario default to None ("the scenario's
default"); the runner refuses them for the other scenarios instead of silently ignoring them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from wpl_nas.config import coerce_field, read_yaml_mapping
from wpl_nas.errors import ConfigError
from wpl_nas.strategy_options import STRATEGY_SECTIONS, opt
from wpl_nas.threads import DEFAULT_THREADS, THREADS_HELP

__all__ = ["LabConfig", "load_lab_config", "parse_floats", "parse_ints"]


def _default_sections() -> dict[str, Any]:
    return {name: cls() for name, cls in STRATEGY_SECTIONS.items()}


@dataclass
class LabConfig:
    """Everything ``wpl-nas forgetting`` needs. The defaults run the WPL paper's two-model
    experiment on MNIST-1D with naive weight sharing and WPL in about a minute on a 2-core CPU.

    Attributes:
        sections: The strategies' option sections, ``{section: options}`` (``wpl``, ``ewc``, ...),
            one per entry of :data:`~wpl_nas.strategy_options.STRATEGY_SECTIONS`; in YAML and
            on the command line they are top-level keys (``wpl: {alpha: 300}``, ``--wpl-alpha``).
    """

    # What to measure.
    scenario: str = opt("two-model", "Scenario: two-model, sequence, split or permuted (see above).")
    strategies: str = opt(
        "naive,wpl", "Comma-separated strategies to compare (each a registered name or two joined by '+', "
        "e.g. wpl+distill), or 'all' for every registered strategy.")
    dataset: str = opt("mnist1d", "Data set: mnist1d (generated locally), mnist, fashion_mnist, cifar10, cifar100.")
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
    sections: dict[str, Any] = field(default_factory=_default_sections)

    #: Fields that take comma-separated lists (YAML may also give a list or a single number).
    LIST_FIELDS = ("shared", "a_fraction")

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

    @property
    def strategy_options(self) -> SimpleNamespace:
        """One attribute per strategy section (``.wpl``, ``.ewc``, ...): what
        :func:`~wpl_nas.strategies.create_strategy` reads a strategy's options from."""
        return SimpleNamespace(**self.sections)

    # --- checks -------------------------------------------------------------------------
    def validate(self) -> LabConfig:
        """Check every value that needs no data or registry; return self.

        Names (scenario, strategies, dataset, space, architecture) and what depends on the data
        (``tasks`` dividing the classes) are checked by :func:`wpl_nas.lab.run_lab` before
        anything is written.

        Raises:
            ConfigError: the first bad value, naming it.
        """
        _require(self, ("epochs", "batch_size", "eval_batch_size", "seeds"), lambda v: v > 0, "> 0")
        _require(self, ("lr", "momentum", "weight_decay", "grad_clip", "eval_samples", "probe_every",
                        "train_samples", "threads"), lambda v: v >= 0, ">= 0")
        _require(self, ("candidates", "tasks"), lambda v: v is None or v >= 2, ">= 2")
        _require(self, ("channels",), lambda v: v is None or v > 0, "> 0")
        _require(self, ("a_epochs",), lambda v: v is None or v >= 0, ">= 0")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), but got val_fraction={self.val_fraction}")
        if not self.strategies.strip():
            raise ConfigError("strategies must name at least one strategy, but got strategies=''")
        if self.shared is not None:
            parse_ints(self.shared, "shared", choices=range(1, 5))
        if self.a_fraction is not None:
            for value in parse_floats(self.a_fraction, "a_fraction"):
                if not 0.0 < value <= 1.0:
                    raise ConfigError(f"a_fraction values must be in (0, 1], but got {value!r} "
                                      f"in a_fraction={self.a_fraction!r}")
        for section in self.sections.values():
            section.validate()
        return self

    # --- dict / YAML --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data, with the strategy sections as top-level keys (the YAML layout)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sections"}
        data.update({name: dataclasses.asdict(section) for name, section in self.sections.items()})
        return data

    def dump(self, path: str | Path, *, extra: Mapping[str, Any] | None = None) -> None:
        """Write the config (plus ``extra`` keys such as the command line) as YAML."""
        Path(path).write_text(yaml.safe_dump({**self.to_dict(), **(extra or {})}, sort_keys=False,
                                             allow_unicode=True))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> LabConfig:
        """Build from a (possibly partial) mapping; unknown keys and wrong types are errors.

        A ``command`` key (the command line a run folder's ``config.yaml`` records) is ignored,
        so ``--config runs/<name>/config.yaml`` reruns a lab run.
        """
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "sections"}
        kwargs: dict[str, Any] = {}
        sections = _default_sections()
        for key, value in data.items():
            if key == "command":
                continue
            if key in STRATEGY_SECTIONS:
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{where}: key {key!r} must be a mapping of options, but got {value!r}")
                sections[key] = _build_section(STRATEGY_SECTIONS[key], value, where=f"{where}: {key}")
            elif key in fields:
                kwargs[key] = _coerce(cls, key, value, where)
            else:
                valid = [*fields, *STRATEGY_SECTIONS]
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(valid)}")
        return cls(**kwargs, sections=sections)

    def replace(self, **overrides: Any) -> LabConfig:
        """A copy with fields (or ``section={...}`` partial dicts for strategy options) overridden."""
        data = self.to_dict()
        for key, value in overrides.items():
            if key in STRATEGY_SECTIONS and isinstance(value, Mapping):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return LabConfig.from_dict(data)


def load_lab_config(path: str | Path) -> LabConfig:
    """Read a YAML lab config (any subset of the keys of :class:`LabConfig`).

    Raises:
        ConfigError: missing file, malformed YAML, not a mapping, unknown key or wrong type;
            the message names the file and the key.
    """
    return LabConfig.from_dict(read_yaml_mapping(path), where=str(path))


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
def _require(config: LabConfig, names: tuple[str, ...], ok: Any, what: str) -> None:
    for name in names:
        value = getattr(config, name)
        # Written as "not ok" so that NaN fails every range.
        if value is not None and not ok(value):
            raise ConfigError(f"{name} must be {what}, but got {name}={value!r}")


def _coerce(owner: type, name: str, value: Any, where: str) -> Any:
    """``value`` as the type of field ``name`` of ``owner``, or a ConfigError naming the key."""
    if owner is LabConfig and name in LabConfig.LIST_FIELDS:
        # YAML may spell a list field as a list or as a single number.
        if isinstance(value, list) and value and all(_is_number(v) for v in value):
            value = ",".join(str(v) for v in value)
        elif _is_number(value):
            value = str(value)
    return coerce_field(value, owner, name, where)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _build_section(cls: type, data: Mapping[str, Any], *, where: str) -> Any:
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(names)}")
        kwargs[key] = _coerce(cls, key, value, where)
    return cls(**kwargs)

"""Search configuration: every default in one place, YAML in and out, validation.

A :class:`SearchConfig` is what ``wpl-nas search`` runs. It comes from defaults, then an
optional YAML file, then command-line flags (each layer overrides the one before). The CLI
flags are generated from these dataclass fields, so every flag has a YAML key of the same
name (``--batch-size`` <-> ``batch_size``; ``--wpl-alpha`` <-> ``wpl: {alpha: ...}``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wpl_nas.errors import ConfigError

__all__ = ["SECTIONS", "ConfigError", "SearchConfig", "WPLOptions", "load_config"]


def _opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a default and its help text (shown by ``--help``)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class WPLOptions:
    """Weight plasticity loss (Benyahia et al., ICML 2019). Defaults: see each field."""

    alpha: float = _opt(
        1000.0, "Strength α of the pull α/2·Σ Ω(θ−θ*)² on shared weights; kept apart from Ω (never folded in).")
    form: str = _opt(
        "proximal", "How the pull is applied: 'proximal' (implicit step θ←(θ+ηαΩθ*)/(1+ηαΩ) after the "
        "optimiser step; stable for any α) or 'gradient' (closed-form gradient αΩ(θ−θ*) added before "
        "the step, as in the paper; diverges once lr·α·max Ω exceeds ~2).", choices=("proximal", "gradient"))
    fisher_batches: int = _opt(8, "Held-out batches used to estimate a candidate's diagonal Fisher.")
    fisher_batch_size: int = _opt(32, "Batch size for the Fisher estimate (F ≈ B·mean of squared batch gradients).")
    accumulate: str = _opt(
        "sum", "How Ω combines candidates: 'sum' (Ω+=F), 'decay' (Ω←γΩ+F) or 'max' (Ω←max(Ω,F)).",
        choices=("sum", "decay", "max"))
    decay: float = _opt(0.9, "γ for accumulate=decay.")
    normalize: bool = _opt(
        False, "Rescale each tensor's Fisher to Frobenius norm --wpl-normalize-norm before accumulating "
        "(what the reference code's clip ends up doing).")
    normalize_norm: float = _opt(10.0, "Per-tensor Fisher norm when --wpl-normalize is on (reference code: 10).")
    start_trial: int = _opt(0, "First trial whose candidate is consolidated (earlier ones warm the supernet up).")
    alpha_decay: float = _opt(0.0, "Linear decay of α per trial after --wpl-alpha-decay-after (0: constant α).")
    alpha_decay_after: int = _opt(0, "Trial after which α starts to decay.")
    include_global: bool = _opt(
        True, "Also protect the skeleton's weights (stem, reductions, head) that every candidate shares; "
        "the reference code protects only the cell ops.")

    def validate(self) -> None:
        _positive(self, "fisher_batches", "fisher_batch_size")
        _non_negative(self, "alpha", "alpha_decay", "start_trial", "alpha_decay_after")
        if not 0.0 <= self.decay <= 1.0:
            raise ConfigError(f"wpl.decay must be in [0, 1], but got decay={self.decay}")
        if self.normalize_norm <= 0:
            raise ConfigError(f"wpl.normalize_norm must be > 0, but got normalize_norm={self.normalize_norm}")


@dataclass
class SearchConfig:
    """Everything ``wpl-nas search`` needs. The defaults run a small search on MNIST-1D."""

    # What to search.
    space: str = _opt("mnist1d", "Search space: a built-in name (see `wpl-nas spaces`) or a path to a .yaml file.")
    dataset: str = _opt("mnist1d", "Data set: mnist1d (generated locally), mnist, fashion_mnist, cifar10, cifar100.")
    data_dir: str = _opt("data", "Where torchvision data sets live (or are downloaded to) and MNIST-1D is cached.")
    download: bool = _opt(False, "Download torchvision data sets into --data-dir if missing.")
    val_fraction: float = _opt(0.2, "Share of the training data held out for scoring, Fisher and retention.")
    strategy: str = _opt("wpl", "Consolidation strategy: wpl or naive (plain weight sharing).")
    # How Optuna searches.
    sampler: str = _opt("tpe", "Optuna sampler: tpe, random or grid (grid: spaces up to 10,000 architectures).")
    pruner: str = _opt("none", "Optuna pruner on per-epoch scores: none, median or halving.")
    trials: int = _opt(24, "Total trials (candidates) in the study; rerunning with a larger number extends it.")
    study_name: str | None = _opt(None, "Study name and run folder name (default: <space>-<strategy>).")
    storage: str | None = _opt(
        None, "Optuna storage URL (default sqlite:///runs/<study>/study.db); any RDB URL, e.g. postgresql://...")
    runs_dir: str = _opt("runs", "Parent folder of run folders.")
    # How each candidate trains.
    epochs: int = _opt(2, "Training epochs per candidate (a score is reported to Optuna after each).")
    batch_size: int = _opt(64, "Training batch size.")
    lr: float = _opt(0.05, "SGD learning rate of the shared weights.")
    momentum: float = _opt(0.9, "SGD momentum.")
    weight_decay: float = _opt(1e-4, "SGD weight decay.")
    grad_clip: float = _opt(5.0, "Clip the global gradient norm to this (0: off).")
    # How candidates are scored and the retained pool re-scored.
    eval_samples: int = _opt(0, "Size of the fixed validation subset used for scores (0: the whole split).")
    eval_batch_size: int = _opt(256, "Evaluation batch size (batch norm uses batch statistics, so keep it fixed).")
    pool_best: int = _opt(5, "Retained pool: the best candidates kept and re-scored after every trial.")
    pool_recent: int = _opt(3, "Retained pool: the most recent candidates kept and re-scored.")
    # Reproducibility and hardware.
    seed: int = _opt(0, "Seed for weights, data order, splits and the sampler.")
    device: str = _opt("auto", "auto, cpu, cuda, cuda:N or mps.")
    threads: int = _opt(
        0, "CPU threads for PyTorch (0: its default, one per core). On a machine shared with other "
        "busy processes, 1 avoids threads waiting on each other.")
    # Strategy options.
    wpl: WPLOptions = field(default_factory=WPLOptions, metadata={"help": "Weight plasticity loss options."})

    # Fields that may change between runs of the same study (everything else must match).
    RESUMABLE_CHANGES = ("trials", "device", "threads", "storage")

    @property
    def resolved_study_name(self) -> str:
        return self.study_name or f"{Path(self.space).stem}-{self.strategy}"

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.resolved_study_name

    @property
    def resolved_storage(self) -> str:
        return self.storage or f"sqlite:///{(self.run_dir / 'study.db').as_posix()}"

    def validate(self) -> SearchConfig:
        """Check values that need no imports of heavy components; return self.

        Names (space, dataset, strategy, sampler, pruner) are checked against their
        registries by :func:`wpl_nas.api.run_search` before anything is written.
        """
        _positive(self, "trials", "epochs", "batch_size", "eval_batch_size", "pool_best")
        _non_negative(self, "lr", "momentum", "weight_decay", "grad_clip", "eval_samples", "pool_recent",
                      "threads")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), but got val_fraction={self.val_fraction}")
        for section in SECTIONS:
            getattr(self, section).validate()
        for f in dataclasses.fields(self):
            _check_choice(self, f)
        for f in dataclasses.fields(WPLOptions):
            _check_choice(self.wpl, f, prefix="wpl.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dump(self, path: str | Path, *, extra: Mapping[str, Any] | None = None) -> None:
        """Write the config (plus ``extra`` keys such as the command line) as YAML."""
        data = {**self.to_dict(), **(extra or {})}
        Path(path).write_text(yaml.safe_dump(data, sort_keys=False))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> SearchConfig:
        """Build from a (possibly partial) mapping; unknown keys and wrong types are errors."""
        return _build(cls, data, where=where)

    def replace(self, **overrides: Any) -> SearchConfig:
        """A copy with top-level fields (or ``section={...}`` partial dicts) overridden."""
        data = self.to_dict()
        for key, value in overrides.items():
            if key in SECTIONS and isinstance(value, Mapping):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return SearchConfig.from_dict(data)


#: Nested option sections of :class:`SearchConfig` (one per strategy with options).
SECTIONS: dict[str, type] = {"wpl": WPLOptions}


def load_config(path: str | Path) -> SearchConfig:
    """Read a YAML config file (any subset of the keys of :class:`SearchConfig`).

    Raises:
        ConfigError: missing file, malformed YAML, not a mapping, unknown key or wrong type;
            the message names the file and the key.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values, but got {data!r}")
    return _build(SearchConfig, data, where=str(path))


# --- helpers -------------------------------------------------------------------------------
def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{name} must be > 0, but got {name}={value!r}")


def _non_negative(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, but got {name}={value!r}")


def _check_choice(obj: Any, f: dataclasses.Field[Any], prefix: str = "") -> None:
    choices = f.metadata.get("choices")
    value = getattr(obj, f.name)
    if choices and value not in choices:
        raise ConfigError(f"unknown {prefix}{f.name} {value!r}; valid choices: {', '.join(choices)}")


def field_type(cls: type, name: str) -> Any:
    """The resolved type of field ``name`` of dataclass ``cls``, with ``X | None`` unwrapped."""
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0]
    return hint


def _coerce(value: Any, cls: type, name: str, where: str) -> Any:
    kind = field_type(cls, name)
    optional = typing.get_type_hints(cls)[name] != kind
    if value is None and optional:
        return None
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(f"{where}: key {name!r} must be of type {kind.__name__}, but got {value!r}")
    return value


def _build(cls: type, data: Mapping[str, Any], *, where: str) -> Any:
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(names)}")
        if cls is SearchConfig and key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: key {key!r} must be a mapping of options, but got {value!r}")
            kwargs[key] = _build(SECTIONS[key], value, where=f"{where}: {key}")
        else:
            kwargs[key] = _coerce(value, cls, key, where)
    return cls(**kwargs)

"""The run folder: where one search keeps everything, every file name in one place.

::

    RUN_DIR/
      config.yaml            the options in force, the command, the study's name, the history of changes
      data.json              the statistics the data set measured on its files when the run first loaded it
                             (imagefolder's per-channel mean and std), given back to every later load
      space/NAME.yaml        a copy of the space file the run was made from (none for a built-in space)
      study.db               the Optuna study (SQLite, unless another storage was given)
      search.lock            who is searching this folder now
      checkpoints/last.pt    supernet, strategy, optimiser, retained pool, finished trials, RNG states
      artifacts/             each trial's cell image (Optuna artifacts, shown by the dashboard)
      retention.json         the retained pool now (members, measures, latest scores), rewritten after every trial
      retention.csv          the retention matrix, one row per re-score, appended after every trial
      anatomy.jsonl, anatomy/  per-stage CKA of the pool members (a line per trial), and their snapshots
      final.json, .csv       every candidate re-scored on the final supernet
      tb/                    TensorBoard events
      rank/, export/, retrain/, report/, anatomy.md, anatomy.png   written by the commands of those names

:class:`RunFolder` reads and writes the files a run reads back (its configuration record and its
checkpoint), holds the folder's write lock, and opens the final supernet cheaply for read-only
commands (:meth:`RunFolder.load_supernet`). Everything it reads is untrusted input: the YAML is
read safely and the checkpoint with ``weights_only=True``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

from wpl_nas.assembly import build_supernet, evaluation_set, resolve_device
from wpl_nas.config import RUN_RECORD_KEYS, STUDY_DB, SearchConfig, resume_changes
from wpl_nas.data import DataBundle, Statistics, load_dataset
from wpl_nas.errors import ConfigError
from wpl_nas.evaluation import RetainedPool
from wpl_nas.evaluation.scoring import METRICS, Metric
from wpl_nas.spaces import Architecture, SearchSpace, load_space, space_file
from wpl_nas.storage import mask_storage, open_storage
from wpl_nas.strategies import Strategy, create_strategy
from wpl_nas.supernet import Supernet
from wpl_nas.tracking import load_checkpoint, read_json, save_checkpoint, write_text_atomically
from wpl_nas.tracking.lock import LOCK_FILE, RunLock, create_run_folder
from wpl_nas.tracking.signals import deferred

__all__ = [
    "ANATOMY_DIR",
    "ANATOMY_JSON",
    "ANATOMY_LOG",
    "ANATOMY_MD",
    "ANATOMY_PNG",
    "ARTIFACTS",
    "CHECKPOINT",
    "CHECKPOINT_KEYS",
    "CONFIG_FILE",
    "DATA_JSON",
    "EXPORT_DIR",
    "FINAL_CSV",
    "FINAL_JSON",
    "LOCK_FILE",
    "RANKING_CSV",
    "RANKING_MD",
    "RANK_DIR",
    "REPORT_DIR",
    "RETENTION_CSV",
    "RETENTION_JSON",
    "RETRAIN_DIR",
    "SPACE_DIR",
    "STANDALONE_JSON",
    "STUDY_DB",
    "TENSORBOARD_DIR",
    "Run",
    "RunFolder",
    "TrainedSupernet",
    "anatomy_lines",
    "load_run",
    "read_anatomy",
]

CONFIG_FILE = "config.yaml"
#: What the data set measured on its files at the run's first load (``DataBundle.statistics``):
#: ``{"dataset": NAME, "mean": [...], "std": [...]}``, written once.
DATA_JSON = "data.json"
#: A copy of the space file the run was made from, under the file's own name (which names the
#: study when no study name is given); none for a built-in space.
SPACE_DIR = "space"
CHECKPOINT = "checkpoints/last.pt"
#: What every checkpoint holds (``identity``, the study it belongs to, came later and may be absent).
CHECKPOINT_KEYS = ("supernet", "strategy", "optimizer", "pool", "finished", "rng")
ARTIFACTS = "artifacts"
RETENTION_JSON = "retention.json"
RETENTION_CSV = "retention.csv"
#: The anatomy record: one JSON line per trial, ``{"after_trial": N, "cka": {member: {stage: CKA}}}``
#: (appended, so a trial's cost does not grow with the search; :func:`read_anatomy` reads it).
ANATOMY_LOG = "anatomy.jsonl"
#: The anatomy record of runs made before :data:`ANATOMY_LOG`: one JSON document,
#: ``{member: {after trial: {stage: CKA}}}``, rewritten whole after every trial.
ANATOMY_JSON = "anatomy.json"
ANATOMY_DIR = "anatomy"
ANATOMY_MD = "anatomy.md"
ANATOMY_PNG = "anatomy.png"
FINAL_JSON = "final.json"
FINAL_CSV = "final.csv"
TENSORBOARD_DIR = "tb"
RANK_DIR = "rank"
#: What ``wpl-nas rank`` writes in RANK_DIR: the ranking table and its rows, and the stand-alone scores it caches.
RANKING_MD = "ranking.md"
RANKING_CSV = "ranking.csv"
STANDALONE_JSON = "standalone.json"
EXPORT_DIR = "export"
RETRAIN_DIR = "retrain"
REPORT_DIR = "report"


class RunFolder:
    """One run folder (see the module docstring for its layout).

    Call order for a search: :meth:`lock` (creates the folder), :meth:`load_checkpoint`,
    :meth:`record_config` once the study is known, :meth:`save_checkpoint` after every trial,
    :meth:`unlock`. Read-only commands call :meth:`config`, :meth:`study_name` and
    :meth:`load_supernet`, and take no lock.

    Args:
        path: The folder (it need not exist yet).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = RunLock(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # --- where things are ------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD_DIR

    @property
    def anatomy_dir(self) -> Path:
        return self.path / ANATOMY_DIR

    def snapshot_path(self, trial: int) -> Path:
        """Pool member ``trial``'s anatomy snapshot."""
        return self.anatomy_dir / f"trial_{trial:04d}.pt"

    def trial_dir(self, kind: str, trial: int) -> Path:
        """Where command ``kind`` (:data:`EXPORT_DIR`, :data:`RETRAIN_DIR`) keeps trial ``trial``'s files."""
        return self.path / kind / f"trial_{trial:04d}"

    @property
    def default_storage(self) -> str:
        """The SQLite URL of the folder's own study file, wherever the folder is opened from."""
        return f"sqlite:///{(self.path / STUDY_DB).resolve().as_posix()}"

    def space_copy(self, space: str) -> Path | None:
        """Where the run keeps its copy of space file ``space`` (None for a built-in space)."""
        return None if space_file(space) is None else self.path / SPACE_DIR / Path(space).name

    # --- config.yaml --------------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether a search has recorded its configuration here."""
        return self.config_path.is_file()

    def read_record(self) -> dict[str, Any]:
        """``config.yaml`` as a mapping: the options, and ``command``, ``study`` and ``history``.

        Raises:
            ConfigError: it cannot be read, or is not a mapping.
        """
        path = self.config_path
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the run's configuration {path} ({exc}); restore it from a copy") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a run's configuration must be a mapping of keys to values, but got {data!r}")
        return data

    def config(self) -> SearchConfig:
        """The :class:`SearchConfig` in force (the record's top-level options).

        A run made from a space file keeps a copy of it; the configuration returned names that
        copy, so the run opens from any folder, and a space file edited since cannot pass for the
        run's own.
        """
        data = {k: v for k, v in self.read_record().items() if k not in RUN_RECORD_KEYS}
        config = SearchConfig.from_dict(data, where=str(self.config_path))
        copy = self.space_copy(config.space)
        return config.replace(space=str(copy)) if copy is not None and copy.is_file() else config

    def study_name(self) -> str:
        """The name of the run's study: as recorded (a run made with a caller's own Optuna study
        may name it as it likes), else the one its options give."""
        name = self.read_record().get("study")
        return name if isinstance(name, str) and name else self.config().resolved_study_name

    def history(self) -> list[dict[str, Any]]:
        """The options changed when the run was resumed, oldest first: ``{"at_trial": position,
        "changed": {option: [old, new]}, "command": [...]}`` each, ``at_trial`` being the position
        (finished trials before it) of the first candidate that used the new values."""
        history = self.read_record().get("history") or []
        return list(history) if isinstance(history, list) else []

    def record_config(self, config: SearchConfig, *, study: str, command: Sequence[str] | None,
                      position: int) -> None:
        """Write ``config.yaml`` for a new run (with its study's name, which a caller's own study
        need not take from the config, and a copy of its space file), or add the options changed
        on resume to its history, ``position`` being the first candidate they apply to."""
        if not self.is_run():
            copy = self.space_copy(config.space)
            if copy is not None:  # load_space has read it as UTF-8 already
                write_text_atomically(copy, Path(config.space).read_text(encoding="utf-8"))
            config.dump(self.config_path, extra={"command": list(command) if command is not None else None,
                                                 "study": study})
            return
        changes = resume_changes(self.config(), config, run_dir=self.path)
        if not changes:
            return
        record = self.read_record()
        history = [*self.history(), {"at_trial": position, "changed": changes,
                                     "command": list(command) if command is not None else None}]
        with deferred():
            config.dump(self.config_path, extra={"command": record.get("command"), "study": record.get("study"),
                                                 "history": history})

    # --- data.json ---------------------------------------------------------------------------
    def statistics(self) -> Statistics | None:
        """The data statistics the run recorded (:data:`DATA_JSON`), to give back to every load of its
        data set (``load_dataset(..., statistics=)``); None when it recorded none (a data set with
        fixed statistics, a run made before they were recorded, or not a run yet).

        Raises:
            ConfigError: the file is damaged: not JSON, or not equal-length lists of finite numbers with
                every std > 0 (the loader checks the number of channels it needs).
        """
        path = self.path / DATA_JSON
        if not self.is_run() or not path.is_file():
            return None
        record = read_json(path, what="the run's data statistics")
        mean: Any = record.get("mean") if isinstance(record, dict) else None
        std: Any = record.get("std") if isinstance(record, dict) else None

        def numbers(values: Any) -> bool:
            return isinstance(values, list) and bool(values) and all(
                isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v) for v in values)

        if not (numbers(mean) and numbers(std) and len(mean) == len(std) and min(std) > 0):
            raise ConfigError(f"{path}: the data statistics must be {{'mean': [...], 'std': [...]}}, one finite "
                              f"number per channel each and every std > 0, but got {record!r}; restore the file "
                              "from a copy (or delete it to measure them again on the files as they are now)")
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def record_statistics(self, dataset: str, statistics: Statistics | None) -> None:
        """Write :data:`DATA_JSON` with ``statistics`` (the bundle's), unless the run has it already:
        the first load's statistics are the run's for good. None (nothing measured) writes nothing."""
        path = self.path / DATA_JSON
        if statistics is None or path.is_file():
            return
        mean, std = statistics
        write_text_atomically(path, json.dumps({"dataset": dataset, "mean": list(mean), "std": list(std)}) + "\n")

    # --- the checkpoint --------------------------------------------------------------------
    def load_checkpoint(self, *, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The checkpoint's contents (:data:`CHECKPOINT_KEYS`, and ``identity``), or None before
        the first trial.

        Raises:
            ConfigError: it is damaged, lacks a key, or holds anything but tensors and plain containers.
        """
        if not self.checkpoint_path.is_file():
            return None
        return load_checkpoint(self.checkpoint_path, map_location=map_location, required=CHECKPOINT_KEYS)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Replace the checkpoint atomically; a signal (Ctrl-C, SIGTERM) waits until it is written."""
        with deferred():
            save_checkpoint(self.checkpoint_path, state)

    # --- one writer ---------------------------------------------------------------------
    def create(self) -> None:
        """Make the folder (and its parents) if missing.

        Raises:
            ConfigError: it cannot be made or written.
        """
        create_run_folder(self.path)

    def lock(self) -> None:
        """Take the folder's write lock (idempotent; it creates the folder).

        Raises:
            RunLocked: another process is searching this folder (the message names it).
        """
        self._lock.acquire()

    def unlock(self) -> None:
        """Release the write lock (the end of the process releases it too)."""
        self._lock.release()

    # --- read-only ----------------------------------------------------------------------
    def load_supernet(self, *, device: str | torch.device | None = None) -> TrainedSupernet:
        """The run's supernet with its latest weights, its data and its retained pool, for commands
        that only read (``select``, ``export``, ``anatomy``, ``rank``): no optimiser, trainer or RNG
        state is restored and nothing is written. The strategy is rebuilt too, because some shape
        the forward pass (HAT's gates), so scores equal the search's.

        Args:
            device: Where to put it [default: the run's ``device`` option].

        Raises:
            ConfigError: not a run folder, or its checkpoint is missing, damaged or from another run.
        """
        config = self.config()
        device = resolve_device(config.device) if device is None else device
        state = self.load_checkpoint(map_location=device)
        if state is None:
            raise ConfigError(f"run {self.path} has no checkpoint ({CHECKPOINT}): no trial has finished yet")
        space = load_space(config.space)
        data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                            val_fraction=config.val_fraction, seed=config.seed, train_samples=config.train_samples,
                            image_size=config.image_size, statistics=self.statistics())
        supernet = build_supernet(space, data, seed=config.seed).to(device)
        strategy = create_strategy(config.strategy, supernet, config).to(device)
        metric = METRICS.get(data.metric)
        pool = RetainedPool(best=config.pool_best, recent=config.pool_recent, higher_is_better=metric.higher_is_better)
        try:
            supernet.load_state_dict(state["supernet"])
            strategy.load_state_dict(state["strategy"])
            pool.load_state_dict(state["pool"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
            raise ConfigError(f"checkpoint {self.checkpoint_path} does not fit this run ({exc}): it is damaged or "
                              "from another run; restore this run's checkpoint") from None
        eval_x, eval_y = evaluation_set(data, samples=config.eval_samples, device=torch.device(device))
        return TrainedSupernet(config, space, data, supernet, strategy, pool, metric, eval_x, eval_y,
                               config.eval_batch_size)


@dataclass
class Run:
    """A run folder opened by :func:`load_run`.

    Attributes:
        config: The configuration recorded in its ``config.yaml``.
        study: Its Optuna study.
        run_dir: The folder.
        storage: The study's storage as shown: its URL with the password masked (``***``), or the
            journal file (the folder's own ``study.db`` unless another was given).
        optuna_storage: The storage opened, password and driver filled in (:mod:`wpl_nas.storage`):
            give it to ``optuna.load_study`` or optuna-dashboard.
    """

    config: SearchConfig
    study: optuna.Study
    run_dir: Path
    storage: str
    optuna_storage: optuna.storages.BaseStorage

    @property
    def folder(self) -> RunFolder:
        """The run folder's files (:class:`~wpl_nas.run_folder.RunFolder`)."""
        return RunFolder(self.run_dir)


def load_run(run_dir: str | Path) -> Run:
    """Open a run folder written by :func:`run_search` (or a :class:`SupernetObjective`): its config
    and its study. The default SQLite study is found inside the folder, wherever it is opened from;
    a storage whose password the folder keeps masked is opened as :mod:`wpl_nas.storage` says
    (``WPL_NAS_STORAGE``, or the driver's own password file).

    Raises:
        ConfigError: not a run folder, or its storage cannot be opened, or its study is not in it.
    """
    folder = RunFolder(run_dir)
    if not folder.is_run():
        raise ConfigError(f"{folder.path} is not a wpl-nas run folder: {CONFIG_FILE} is missing")
    config, name = folder.config(), folder.study_name()
    spec = config.storage or folder.default_storage
    storage = open_storage(spec, create=False)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ConfigError(f"study {name!r} of run {folder.path} is not in {mask_storage(spec)}") from None
    return Run(config, study, folder.path, mask_storage(spec), storage)


@dataclass
class TrainedSupernet:
    """A run's supernet with its latest weights, as :meth:`RunFolder.load_supernet` opens it.

    Attributes:
        config: The run's options.
        space: Its search space.
        data: Its data.
        supernet: The supernet, with the checkpoint's weights, in evaluation mode when scored.
        strategy: The run's strategy with its saved state (it may gate the forward pass).
        pool: The retained pool as last saved.
        metric: The score (accuracy, or perplexity).
        eval_x: The fixed evaluation inputs every score of the search used.
        eval_y: Their targets.
        eval_batch_size: The evaluation batch size.
    """

    config: SearchConfig
    space: SearchSpace
    data: DataBundle
    supernet: Supernet
    strategy: Strategy
    pool: RetainedPool
    metric: Metric
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    eval_batch_size: int

    @property
    def device(self) -> torch.device:
        return self.eval_x.device

    def score(self, arch: Architecture) -> float:
        """``arch``'s score on the fixed evaluation set with the latest weights (as the search scores)."""
        return self.metric.compute(self.supernet, arch, self.eval_x, self.eval_y, batch_size=self.eval_batch_size)


def anatomy_lines(path: Path) -> tuple[list[tuple[int, str]], int]:
    """The lines of an :data:`ANATOMY_LOG` file that read as records, each with its trial
    (``(after_trial, line)``, in file order), and how many did not (damage, or a line a running
    search is still writing); none if the file is missing."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], 0
    kept: list[tuple[int, str]] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            after, readable = int(record["after_trial"]), isinstance(record["cka"], dict)
        except (ValueError, TypeError, KeyError):
            readable = False
        if readable:
            kept.append((after, line))
        else:
            bad += 1
    return kept, bad


def read_anatomy(run_dir: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    """A run's anatomy record as ``{member: {after trial: {stage: CKA}}}`` (trials as strings): its
    :data:`ANATOMY_LOG` (lines that do not read are passed over), or for a run made before it, its
    :data:`ANATOMY_JSON`; empty when it has neither.

    Raises:
        ConfigError: the old :data:`ANATOMY_JSON` is not valid JSON.
    """
    folder = Path(run_dir)
    if not (folder / ANATOMY_LOG).is_file() and (folder / ANATOMY_JSON).is_file():
        record = read_json(folder / ANATOMY_JSON, what="anatomy record")
        return record if isinstance(record, dict) else {}
    history: dict[str, dict[str, dict[str, float]]] = {}
    for after, line in anatomy_lines(folder / ANATOMY_LOG)[0]:
        for member, cka in json.loads(line)["cka"].items():
            history.setdefault(str(member), {})[str(after)] = cka
    return history

"""Search configuration: every default in one place, YAML in and out, validation.

A :class:`SearchConfig` is what ``wpl-nas search`` runs. It comes from defaults, then an
optional YAML file, then command-line flags (each layer overrides the one before). The CLI
flags are generated from these dataclass fields, so every flag has a YAML key of the same
name (``--batch-size`` <-> ``batch_size``; ``--wpl-alpha`` <-> ``wpl: {alpha: ...}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from wpl_nas.configs import Config, opt
from wpl_nas.errors import ConfigError
from wpl_nas.threads import DEFAULT_THREADS, THREADS_HELP

__all__ = ["CALIBRATION_SAMPLES", "CHANNELS_LAST", "CHOOSE_BY", "OBJECTIVES", "PRECISIONS", "RUN_RECORD_KEYS",
           "STUDY_DB", "ConfigError", "SearchConfig", "keep_saved", "load_config", "resume_changes"]

#: How the best architecture is chosen: by its score on the final supernet, or at its own training.
CHOOSE_BY = ("final", "training")
#: The SQLite file of a run's study inside its run folder (the default storage; see wpl_nas.run_folder).
STUDY_DB = "study.db"
#: What ``--precision`` takes: ``auto`` (bf16 on a CUDA device that supports it, fp32 elsewhere),
#: ``fp32`` (no autocast), ``bf16`` or ``fp16`` (autocast to that type; fp16 with a gradient scaler).
#: Resolved for a device by wpl_nas.training.precision.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: What ``--channels-last`` takes: ``auto`` (on for CUDA, off elsewhere), ``on`` or ``off``.
CHANNELS_LAST = ("auto", "on", "off")

#: Training samples on which an export (``wpl-nas export``, :func:`wpl_nas.export.export_run`) estimates
#: its batch norm's running statistics, by default: a few thousand give stable estimates (more change
#: the scores by less than their noise) in seconds on a CPU; a training split with fewer samples is used whole.
CALIBRATION_SAMPLES = 4096

#: The objectives a search can optimise, with their Optuna directions.
OBJECTIVES = {"accuracy": "maximize", "params": "minimize", "flops": "minimize", "latency": "minimize"}


#: Keys a run folder's config.yaml holds beside the options: the command that started the run, the
#: name of its study and the history of the options changed on resume (see :func:`resume_changes`).
RUN_RECORD_KEYS = ("command", "study", "history")


@dataclass
class SearchConfig(Config):
    """Everything ``wpl-nas search`` needs. The defaults run a small search on MNIST-1D.

    Besides the fields below, it holds one section per registered strategy with options
    (:attr:`~wpl_nas.configs.Config.sections`: ``wpl``, ``ewc``, ...), top-level keys in YAML.
    """

    # What to search.
    space: str = opt("mnist1d", "Search space: a built-in name (see `wpl-nas spaces`) or a path to a .yaml file.")
    dataset: str = opt("mnist1d", "Data set: mnist1d (generated locally), mnist, fashion_mnist, cifar10, cifar100, "
                       "ptb, imagefolder (--data-dir holding train/<class>/<images> and optionally test/<class>/..., "
                       "streamed from the files), or one registered with wpl_nas.register_dataset (e.g. by an "
                       "installed plugin).")
    data_dir: str = opt("data", "Where torchvision data sets live (or are downloaded to) and MNIST-1D is cached; for "
                                "imagefolder, the folder of train/ (and test/).")
    image_size: int = opt(32, "imagefolder: every image is resized and centre-cropped to this many pixels square.")
    workers: int = opt(4, "Processes decoding a data set streamed from files (imagefolder) while training (0: the "
                          "main process). Data held in memory does not use them.")
    download: bool = opt(False, "Download torchvision data sets into --data-dir if missing.")
    val_fraction: float = opt(0.2, "Share of the training data held out for scoring, Fisher and retention.")
    train_samples: int = opt(0, "Train on the first N samples of the training split only (0: all); the validation "
                                 "split is unchanged. Less data makes architectures differ more.")
    strategy: str = opt(
        "wpl", "Consolidation strategy: naive (plain weight sharing), wpl, ewc, online-ewc, si, mas, anpyc, hat, "
        "distill, synthetic, or two joined by '+' (e.g. hat+distill, wpl+distill).")
    # How Optuna searches.
    objectives: str = opt(
        "accuracy", "Comma-separated objectives: accuracy (always first: the data's score, maximised accuracy, or "
        "minimised perplexity for language data such as ptb), then any of params, flops, latency (minimised; "
        "latency measured on --device). More than one runs a multi-objective study.")
    sampler: str = opt(
        "auto", "Optuna sampler: auto (tpe for one objective, nsga2 for several), tpe, random, nsga2, grid (spaces "
        "up to 10,000 architectures) or forgetting-aware (TPE steered away from candidates that overlap the best "
        "ones harmfully; see wpl_nas.ForgettingAwareSampler).")
    pruner: str = opt("none", "Optuna pruner on per-epoch scores: none, median or halving.")
    trials: int = opt(24, "Finished trials (candidates) the study ends with, failed ones aside; rerunning with a "
                           "larger number extends it.")
    study_name: str | None = opt(None, "Study name and run folder name (default: <space>-<strategy>).")
    storage: str | None = opt(
        None, "Optuna storage: a database URL (default sqlite:///runs/<study>/study.db), e.g. "
        "postgresql://user:password@host/db (any installed driver; pip install 'wpl-nas[postgres]'), or a journal "
        "file ending in .log or .jsonl, e.g. runs/<study>/journal.log. A password is never saved or shown (it reads "
        "***): to resume, give the full URL again or put it in the environment variable WPL_NAS_STORAGE.")
    runs_dir: str = opt("runs", "Parent folder of run folders.")
    # How each candidate trains.
    epochs: int = opt(2, "Training epochs per candidate (a score is reported to Optuna after each).")
    steps: int = opt(0, "Training steps (batches) per candidate instead of --epochs (0: use --epochs), for searches "
                        "of many candidates trained briefly. Training crosses epoch boundaries and stops part way "
                        "through the last epoch; a score is reported to Optuna at the end of every epoch started.")
    batch_size: int = opt(64, "Training batch size.")
    lr: float = opt(0.05, "SGD learning rate of the shared weights.")
    momentum: float = opt(0.9, "SGD momentum.")
    weight_decay: float = opt(1e-4, "SGD weight decay.")
    grad_clip: float = opt(5.0, "Clip the global gradient norm to this (0: off).")
    # How candidates are scored and the retained pool re-scored.
    eval_samples: int = opt(0, "Size of the fixed validation subset used for scores (0: the whole split).")
    eval_batch_size: int = opt(256, "Evaluation batch size (batch norm uses batch statistics, so keep it fixed).")
    pool_best: int = opt(5, "Retained pool: the best candidates kept and re-scored after every trial "
                            "(every --rescore-every trials).")
    pool_recent: int = opt(3, "Retained pool: the most recent candidates kept and re-scored.")
    figures_every: int = opt(1, "Draw TensorBoard's forgetting heatmap (forgetting/matrix) after every N trials: it "
                                 "covers every candidate ever pooled, so its cost grows with the search (a few "
                                 "hundred ms a trial at 1,000 trials); the measures are logged every trial regardless.")
    rescore_every: int = opt(1, "Re-score the retained pool after every N-th trial and the last (9% of a default "
                                "search at 1, 3% at 4); its measures then step N trials at a time.")
    epoch_scores: bool = opt(True, "Off: score a candidate after its last epoch only, the same values (saves 2% of "
                                   "a default search, 6% at --epochs 8; no pruner).")
    anatomy_every: int = opt(1, "Measure where the pool forgets (per-stage CKA of every member against its snapshot, "
                                "anatomy.jsonl) after every N trials: each member is run on the probe again, about "
                                "5% of a default search; a member's snapshot is still taken when it joins.")
    # How the search ends: every candidate re-scored on the final supernet (wpl_nas.selection).
    final_top_k: int = opt(0, "At the end, re-score on the final supernet only the best K candidates by score at "
                               "training (0: every candidate).")
    # training, not final: with the default WPL the score at training chose truer architectures on both
    # fidelity benchmarks (benchmarks/README.md); final helps only a strong pull (--wpl-alpha 1000).
    choose_by: str = opt("training", "Which score picks the best architecture (the summary, export, retrain): "
                                      "training (the candidate's score right after its own training) or final (on "
                                      "the final supernet, as weight-sharing NAS often chooses).", choices=CHOOSE_BY)
    # Reproducibility and hardware.
    seed: int = opt(0, "Seed for weights, data order, splits and the sampler.")
    device: str = opt("auto", "auto, cpu, cuda, cuda:N or mps.")
    # One thread: the fastest for the small built-in spaces, and it never stalls when other processes
    # hold the cores (wpl_nas.threads; benchmarks/bench_threads.py). It was 0 (one per core) before issue 16,
    # and scores depend on the thread count: the default run's figures changed with it.
    threads: int = opt(DEFAULT_THREADS, THREADS_HELP)
    # auto keeps CPU runs in float32 (identical to before it existed); on CUDA bf16 is the fast path.
    precision: str = opt("auto", "Precision of forward passes (training, scores, Fisher/importance, pool re-scores): "
                                 "auto (bf16 autocast on a CUDA device that supports it, else fp32), fp32, bf16 or "
                                 "fp16 (autocast with a gradient scaler; on a CPU it works but is far slower).",
                         choices=PRECISIONS)
    channels_last: str = opt("auto", "channels_last memory format for 2-D (image) spaces: auto (on for CUDA, off "
                                     "elsewhere), on or off. 1-D spaces are unaffected.", choices=CHANNELS_LAST)
    augment: bool = opt(False, "Augment training batches during search: random crops of the 4-pixel zero-padded "
                               "images and horizontal flips, on the device, seeded per candidate. Images only: data "
                               "of another shape is refused.")

    strategy_registry_module = "wpl_nas.strategies.registry"  # its strategies are the sections
    positive = ("trials", "epochs", "batch_size", "eval_batch_size", "pool_best", "figures_every", "anatomy_every",
                "rescore_every", "image_size")
    non_negative = ("lr", "momentum", "weight_decay", "grad_clip", "eval_samples", "pool_recent", "threads",
                    "final_top_k", "train_samples", "steps", "workers")
    open_unit = ("val_fraction",)
    record_keys = RUN_RECORD_KEYS

    # Options that may change when a run is resumed (everything else must match; :meth:`may_change_on_resume`
    # adds the strategies' strengths, named ``section.key``). Four kinds: where and on what the run
    # goes on (device, threads, storage, runs_dir: a run folder may move); how far it goes and how
    # it chooses at the end (trials, final_top_k, choose_by); what it measures on the way (figures_every,
    # anatomy_every, rescore_every, epoch_scores: measurements, which change no candidate or weight); how
    # *later* candidates train (the SGD hyper-parameters, epochs or steps, batch size, precision and memory
    # format, and the strategies' strengths), which is how a diverged run is rescued with a lower lr (or
    # fp32 after bf16). Not the space, data, seed, sampler, pruner, objectives, strategy kind or any
    # option that shapes saved state (pool sizes, Fisher estimates, folds, protected sets): the
    # checkpoint and the study would no longer mean what they say. Every change is recorded in
    # the run folder's config.yaml (``history``).
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = (
        "trials", "device", "threads", "storage", "runs_dir", "final_top_k", "choose_by", "figures_every",
        "anatomy_every", "rescore_every", "epoch_scores", "lr", "momentum", "weight_decay", "grad_clip", "epochs",
        "steps", "batch_size", "precision", "channels_last", "workers")
    # Of those, the ones that describe this machine rather than the run: a resumed search on the
    # command line takes them from the defaults or flags, not from the run's config.yaml. (workers only
    # changes how many processes decode the files, never which batches come: see wpl_nas.data._stream.)
    MACHINE_OPTIONS: ClassVar[tuple[str, ...]] = ("device", "threads", "runs_dir", "workers")

    @classmethod
    def may_change_on_resume(cls) -> tuple[str, ...]:
        """Every option (dotted name) that may change when a run is resumed: :attr:`RESUMABLE_CHANGES`,
        then each strategy section's ``resumable`` options (its strength: ``wpl.alpha``, ``ewc.lam``, ...)."""
        return cls.RESUMABLE_CHANGES + tuple(f"{key}.{name}" for key, options in cls.section_types().items()
                                             for name in options.resumable)

    @property
    def objective_list(self) -> list[str]:
        """``objectives`` as a list (validated by :meth:`validate`)."""
        return [o.strip() for o in self.objectives.split(",")]

    @property
    def resolved_sampler(self) -> str:
        """``sampler`` with ``auto`` resolved: tpe for one objective, nsga2 (NSGA-II) for several."""
        if self.sampler != "auto":
            return self.sampler
        return "tpe" if len(self.objective_list) == 1 else "nsga2"

    @property
    def resolved_study_name(self) -> str:
        return self.study_name or f"{Path(self.space).stem}-{self.strategy}"

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.resolved_study_name

    @property
    def resolved_storage(self) -> str:
        return self.storage or f"sqlite:///{(self.run_dir / STUDY_DB).as_posix()}"

    def validate(self) -> SearchConfig:
        """Check values that need no imports of heavy components; return self.

        Names (space, dataset, strategy, sampler, pruner) are checked against their
        registries by :func:`wpl_nas.api.run_search` before anything is written.
        """
        super().validate()
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be in [0, {MAX_SEED}] (NumPy takes 32-bit seeds), but got seed={self.seed}")
        if self.study_name is not None:
            check_study_name(self.study_name)
        for name, path in (("runs_dir", Path(self.runs_dir)), ("run folder", self.run_dir)):
            if path.exists() and not path.is_dir():
                raise ConfigError(f"{name} {str(path)!r} is a file, not a folder; give another --runs-dir or "
                                  "--study-name")
        objectives = self.objective_list
        if objectives[0] != "accuracy" or len(set(objectives)) != len(objectives) or \
                not set(objectives) <= set(OBJECTIVES):
            raise ConfigError(f"objectives={self.objectives!r} must be accuracy, then any of "
                              f"{', '.join(o for o in OBJECTIVES if o != 'accuracy')}, each once, comma-separated")
        if len(objectives) > 1 and self.pruner != "none":
            raise ConfigError(f"pruner={self.pruner!r} needs a single objective (Optuna prunes on one reported "
                              f"value), but objectives={self.objectives!r}; use --pruner none")
        if not self.epoch_scores and self.pruner != "none":
            raise ConfigError(f"pruner={self.pruner!r} needs the score after every epoch, but epoch_scores=False "
                              "(--no-epoch-scores); use --epoch-scores, or --pruner none")
        return self


def load_config(path: str | Path) -> SearchConfig:
    """Read a YAML config file (any subset of the keys of :class:`SearchConfig`; a run folder's
    ``config.yaml`` too: its record of commands and changes is skipped).

    Raises:
        ConfigError: missing file, malformed YAML, not a mapping, unknown key or wrong type;
            the message names the file and the key.
    """
    return SearchConfig.load(path)


def resume_changes(saved: SearchConfig, config: SearchConfig, *, run_dir: str | Path) -> dict[str, list[Any]]:
    """The options ``config`` changes in the run ``saved`` describes, as ``{dotted name: [old, new]}``.

    Args:
        saved: The run's recorded configuration (its config.yaml).
        config: The configuration it is resumed with.
        run_dir: The run folder, for the message.

    Raises:
        ConfigError: an option outside :meth:`SearchConfig.may_change_on_resume` differs; the message
            names each one with both values.
    """
    from wpl_nas.spaces import same_space
    from wpl_nas.storage import mask_storage  # sqlalchemy: not for `wpl-nas search --help`

    old, new = saved.flat(), config.flat()
    if same_space(saved.space, config.space):  # the run's copy of its space file and the file itself
        old["space"] = new["space"]
    # Compared with ``auto`` resolved: a run saved with sampler 'tpe' before 'auto' existed resumes.
    old["sampler"], new["sampler"] = saved.resolved_sampler, config.resolved_sampler
    # Compared without passwords: a run folder keeps its storage URL masked (wpl_nas.storage).
    old["storage"], new["storage"] = (mask_storage(c.storage) if c.storage else c.storage for c in (saved, config))
    changed = {k: [old.get(k), v] for k, v in new.items() if old.get(k) != v}
    resumable = saved.may_change_on_resume()
    forbidden = [k for k in changed if k not in resumable]
    if forbidden:
        diffs = "; ".join(f"{k}: saved {changed[k][0]!r}, now {changed[k][1]!r}" for k in forbidden)
        raise ConfigError(
            f"run folder {run_dir} holds a study with a different configuration ({diffs}). "
            f"Only {', '.join(resumable)} may change when resuming; "
            "pass a new --study-name to start another study")
    return changed


def keep_saved(config: SearchConfig, saved: SearchConfig, *, given: set[str]) -> SearchConfig:
    """``config`` with every resumable option that was not ``given`` (dotted names) taken from ``saved``.

    A resumed command line then changes only what it names: ``wpl-nas search --lr 0.01`` on a run
    started with ``--epochs 5`` keeps 5 epochs instead of going back to the default. Options of
    :attr:`SearchConfig.MACHINE_OPTIONS` are left as they are (they describe where this process runs).
    """
    resumable = set(saved.may_change_on_resume()) - set(SearchConfig.MACHINE_OPTIONS) - given
    keep = {k: v for k, v in saved.flat().items() if k in resumable}
    top = {k: v for k, v in keep.items() if "." not in k}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in keep.items():
        if "." in key:
            section, _, name = key.partition(".")
            sections.setdefault(section, {})[name] = value
    return config.replace(**top, **sections)


# --- helpers -------------------------------------------------------------------------------
#: The largest seed: NumPy's legacy generator takes 32-bit seeds.
MAX_SEED = 2**32 - 1


def check_study_name(name: str) -> str:
    """``name`` if it can name a study and its run folder: one path component, not ``.``/``..``.

    Raises:
        ConfigError: an empty name, or one that would put the run folder outside ``runs_dir``.
    """
    bad = ("/" in name or "\\" in name or "\0" in name or name.strip() in ("", ".", "..")
           or Path(name).is_absolute() or Path(name).name != name)
    if bad:
        raise ConfigError(f"study_name must be one folder name (not empty, no '/', '\\', '.' or '..'), so that the "
                          f"run stays inside runs_dir, but got study_name={name!r}")
    return name

"""From a search to a model: ``wpl-nas export`` (the architecture with the supernet's weights).

::

    from wpl_nas.export import export_run
    result = export_run("runs/mnist1d-wpl")            # the best trial; or trial=7
    model = torch.export.load(result.folder / "model.pt2").module()   # needs torch only
    logits = model(x)                                   # (B, classes), or (B, vocabulary, T) for text; any B >= 1

``RUN_DIR/export/trial_NNNN/`` holds

* ``model.pt2``: the stand-alone network in evaluation mode as a ``torch.export`` program,
  loadable with torch alone (no wpl-nas, no supernet), batch size dynamic;
* ``weights.pt``: its ``state_dict``, for ``with_running_stats(Supernet(space, in_channels=...,
  num_classes=..., input_shape=..., fixed=arch)).load_state_dict(...)`` when you want the module
  itself (to fine-tune it, say; ``arch.json`` has the input shape and the classes);
* ``arch.json``: the architecture string, the space (name and its YAML), the input shape, the
  classes, the parameter count, the trial's score at training, the supernet's score on the path
  now and the exported model's, and how its batch norm was recalibrated (``batch_norm``).

The weights are the supernet's *latest* (the run's checkpoint); ``wpl-nas retrain`` trains the
architecture from scratch instead. The supernet's batch norm normalises with each batch's own
statistics, in evaluation too (``track_running_stats=False``, see :mod:`wpl_nas.ops`): right
for a search, where every candidate needs its own statistics, but a deployed model would then
answer one sample by normalising it with itself, at chance. The export therefore turns every
batch norm layer into one with running statistics (:func:`with_running_stats`) and estimates
them on ``calibration_samples`` samples of the run's training split
(:func:`recalibrate_batch_norm`), so the model's output for a sample no longer depends on the
rest of its batch. Its outputs are close to the supernet's on large batches, not equal to them:
compare ``score_exported`` with ``score_supernet`` in ``arch.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import optuna
import torch
from torch import nn
from torch.utils.data import Dataset

from wpl_nas.config import CALIBRATION_SAMPLES, CHOOSE_BY  # the defaults' home: the CLI reads them without torch
from wpl_nas.data._bundle import take
from wpl_nas.errors import ConfigError
from wpl_nas.run_folder import EXPORT_DIR, Run, load_run
from wpl_nas.selection import best_at_training, current_final
from wpl_nas.spaces import Architecture
from wpl_nas.tracking import save_checkpoint, write_text_atomically

__all__ = ["CALIBRATION_SAMPLES", "ExportResult", "choose_trial", "export_run", "recalibrate_batch_norm",
           "with_running_stats"]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_Module = TypeVar("_Module", bound=nn.Module)


@dataclass
class ExportResult:
    """What :func:`export_run` returns: the folder, the trial and architecture, and the exported
    weights' score on the run's evaluation set."""

    folder: Path
    trial: int
    arch: Architecture
    score: float
    #: The supernet's score on the path now (batch norm on batch statistics), for comparison.
    supernet_score: float = math.nan
    #: How batch norm was recalibrated: ``arch.json``'s ``batch_norm`` (see :func:`export_run`).
    batch_norm: dict[str, Any] = field(default_factory=dict)


def _batch_norms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, _BATCH_NORMS)]


def with_running_stats(net: _Module) -> _Module:
    """Make every batch norm layer of ``net`` keep running statistics; in place, returns ``net``.

    The supernet's layers normalise with the batch's own statistics even in evaluation mode
    (``track_running_stats=False``, see :mod:`wpl_nas.ops`). Converted, they normalise with their
    running statistics in evaluation mode, so an output no longer depends on the rest of its
    batch (in training mode they still use the batch's). The statistics start at mean 0 and
    variance 1: estimate them with :func:`recalibrate_batch_norm`, or load an export's
    ``weights.pt``, which holds them. Affine weights and the other settings are kept.
    """
    for bn in _batch_norms(net):
        if bn.track_running_stats:
            continue
        device = bn.weight.device if bn.weight is not None else None
        bn.track_running_stats = True
        bn.register_buffer("running_mean", torch.zeros(bn.num_features, device=device))
        bn.register_buffer("running_var", torch.ones(bn.num_features, device=device))
        bn.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
    return net


def recalibrate_batch_norm(net: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Estimate the running statistics of ``net``'s batch norm layers afresh on ``batches`` (inputs).

    The layers run in training mode, as they normalised during the search, with no gradient; each
    layer's running mean and variance become the average of its batch statistics over all the
    batches, weighted by batch size (a cumulative average, like torch's ``momentum=None``, rather
    than an exponential one that would favour the last batches). Nothing else changes: the mode
    and each layer's momentum are restored. Layers that keep no running statistics are skipped
    (see :func:`with_running_stats`).

    Returns:
        The number of samples seen (0 if ``net`` has no batch norm layer with running statistics,
        in which case ``batches`` is not consumed).
    """
    layers = [bn for bn in _batch_norms(net) if bn.track_running_stats]
    if not layers:
        return 0
    momenta = [bn.momentum for bn in layers]
    was_training = net.training
    for bn in layers:
        bn.reset_running_stats()
    net.train()
    seen = 0
    try:
        with torch.no_grad():
            for x in batches:
                for bn in layers:  # this batch's share of the samples seen so far
                    bn.momentum = len(x) / (seen + len(x))
                net(x)
                seen += len(x)
    finally:
        for bn, momentum in zip(layers, momenta, strict=True):
            bn.momentum = momentum
        net.train(was_training)
    return seen


def _check_calibration_samples(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"calibration_samples must be a whole number of samples, but got "
                          f"calibration_samples={value!r}")
    if value < 1:
        raise ConfigError(f"calibration_samples must be at least 1, but got calibration_samples={value!r}")
    return value


def _calibration_batches(train: Dataset[Any], samples: int, *, batch_size: int, seed: int,
                         device: torch.device) -> Iterator[torch.Tensor]:
    """``samples`` training inputs (all of them if there are fewer) in a seeded random order, normalised,
    on ``device``, in batches of at most ``batch_size`` whose sizes differ by one at most (no stray
    tiny last batch)."""
    size = len(train)  # type: ignore[arg-type]
    n = min(samples, size)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n]
    for part in torch.tensor_split(order, -(-n // batch_size)):
        yield take(train, part, device=device)[0]


def choose_trial(run: Run, trial: int | None, *, by: str | None = None) -> optuna.trial.FrozenTrial:
    """Trial number ``trial`` of the run (it must be complete), or the best complete one if None.

    Args:
        run: The run.
        trial: The trial number, or None for the best.
        by: What "best" means: ``final`` (the best score on the final supernet, see
            :mod:`wpl_nas.selection`; taken now if the run has not recorded it for its latest
            weights) or ``training`` (the best score at training) [default: the run's ``choose_by``].

    Raises:
        ConfigError: no such complete trial, or an unknown ``by``.
    """
    by = by or run.config.choose_by
    if by not in CHOOSE_BY:
        raise ConfigError(f"unknown choose_by {by!r}; valid choices: {', '.join(CHOOSE_BY)}")
    complete = run.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = best_at_training(run.study)
    if best is None:
        raise ConfigError(f"run {run.run_dir} has no complete trial to export")
    if trial is None and by == "final":
        trial = current_final(run.run_dir, run.study).best("final")["trial"]
    elif trial is None:
        return best
    for t in complete:
        if t.number == trial:
            return t
    raise ConfigError(f"trial {trial} of run {run.run_dir} is not a complete trial; complete trials: "
                      f"{', '.join(str(t.number) for t in complete)}")


def export_run(run_dir: str | Path, *, trial: int | None = None, choose_by: str | None = None,
               calibration_samples: int = CALIBRATION_SAMPLES) -> ExportResult:
    """Export a trial's architecture with the supernet's latest weights (see the module docstring).

    ``arch.json``'s ``batch_norm`` records the recalibration: ``layers`` (how many batch norm
    layers the model has), ``statistics`` (``"running"``; None without batch norm),
    ``recalibrated``, ``calibration_samples`` (how many training samples the statistics were
    estimated on: 0 without batch norm), ``calibration_batches``, ``calibration_batch_size`` (the
    largest) and ``calibration_split``. The samples are drawn from the run's training split in
    an order seeded by the run's seed, so exporting twice gives the same model.

    Args:
        run_dir: A search's run folder.
        trial: The trial number [default: the best complete trial].
        choose_by: What "best" means (see :func:`choose_trial`) [default: the run's ``choose_by``].
        calibration_samples: Training samples on which to estimate the exported batch norm's
            running statistics, in batches of the run's batch size (all of them if the training
            split is smaller) [default: :data:`CALIBRATION_SAMPLES`].

    Raises:
        ConfigError: not a run folder, no such complete trial, or ``calibration_samples`` not a
            whole number at least 1 (checked first).
    """
    calibration_samples = _check_calibration_samples(calibration_samples)
    run = load_run(run_dir)
    chosen = choose_trial(run, trial, by=choose_by)
    trained = run.folder.load_supernet()
    arch = trained.space.parse(chosen.user_attrs["arch"])
    supernet_score = trained.score(arch)
    net = trained.supernet.standalone(arch)
    layers = len(_batch_norms(net))
    batch_size = run.config.batch_size
    seen = recalibrate_batch_norm(with_running_stats(net), _calibration_batches(
        trained.data.train, calibration_samples, batch_size=batch_size, seed=run.config.seed, device=trained.device))
    batches = -(-seen // batch_size)  # as _calibration_batches splits them
    batch_norm = {"layers": layers, "statistics": "running" if layers else None, "recalibrated": seen > 0,
                  "calibration_samples": seen, "calibration_batches": batches,
                  "calibration_batch_size": -(-seen // batches) if seen else None,  # the largest batch
                  "calibration_split": "train" if seen else None}
    net.eval()
    data = trained.data
    score = trained.metric.compute(net, arch, trained.eval_x, trained.eval_y, batch_size=trained.eval_batch_size)
    example = trained.eval_x[:8]
    # Any batch size from 1: with running statistics a sample's output does not depend on its batch.
    program = torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    folder = run.folder.trial_dir(EXPORT_DIR, chosen.number)
    folder.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, folder / "model.pt2")
    save_checkpoint(folder / "weights.pt", net.state_dict())
    space_file = trained.space.source
    write_text_atomically(folder / "arch.json", json.dumps({
        "arch": str(arch), "trial": chosen.number, "space": trained.space.name,
        "space_yaml": Path(space_file).read_text() if space_file is not None else None,
        "input_shape": list(data.input_shape), "num_classes": data.num_classes,
        "params": trained.supernet.count_parameters(arch), "score_at_training": chosen.values[0],
        "score_exported": score, "score_supernet": supernet_score, "batch_norm": batch_norm,
        "study": run.study.study_name,
    }, indent=1))
    return ExportResult(folder, chosen.number, arch, score, supernet_score, batch_norm)

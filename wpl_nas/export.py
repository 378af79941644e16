"""From a search to a model: ``wpl-nas export`` (the architecture with the supernet's weights).

::

    from wpl_nas.export import export_run
    result = export_run("runs/mnist1d-wpl")            # the best trial; or trial=7
    model = torch.export.load(result.folder / "model.pt2").module()   # needs torch only
    logits = model(x)                                   # (B, classes), or (B, vocabulary, T) for text; batch >= 2

``RUN_DIR/export/trial_NNNN/`` holds

* ``model.pt2``: the stand-alone network as a ``torch.export`` program, loadable with torch alone
  (no wpl-nas, no supernet), batch size dynamic;
* ``weights.pt``: its ``state_dict``, for ``Supernet(space, in_channels=..., num_classes=...,
  input_shape=..., fixed=arch).load_state_dict(...)`` when you want the module itself (to
  fine-tune it, say; ``arch.json`` has the input shape and the classes);
* ``arch.json``: the architecture string, the space (name and its YAML), the input shape, the
  classes, the parameter count, the trial's score at training and the exported weights' score.

The weights are the supernet's *latest* (the run's checkpoint), so the export reproduces what the
supernet computes on that path now; ``wpl-nas retrain`` trains the architecture from scratch instead.
Batch norm uses batch statistics (as in the supernet), so outputs depend on the batch: compare
batches, not single samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from wpl_nas.api import Run, load_run
from wpl_nas.config import CHOOSE_BY
from wpl_nas.errors import ConfigError
from wpl_nas.objective import SupernetObjective
from wpl_nas.selection import current_final
from wpl_nas.spaces import Architecture
from wpl_nas.tracking import save_checkpoint, write_text_atomically

__all__ = ["ExportResult", "choose_trial", "export_run"]

EXPORT_DIR = "export"


@dataclass
class ExportResult:
    """What :func:`export_run` returns: the folder, the trial and architecture, and the exported
    weights' score on the run's evaluation set."""

    folder: Path
    trial: int
    arch: Architecture
    score: float


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
    if not complete:
        raise ConfigError(f"run {run.run_dir} has no complete trial to export")
    if trial is None and by == "final":
        trial = current_final(run.run_dir, run.study).best("final")["trial"]
    elif trial is None:  # the best by the first objective (perplexity is minimised)
        sign = 1.0 if run.study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1.0
        return max(complete, key=lambda t: (sign * t.values[0], -t.number))
    for t in complete:
        if t.number == trial:
            return t
    raise ConfigError(f"trial {trial} of run {run.run_dir} is not a complete trial; complete trials: "
                      f"{', '.join(str(t.number) for t in complete)}")


def export_run(run_dir: str | Path, *, trial: int | None = None, choose_by: str | None = None) -> ExportResult:
    """Export a trial's architecture with the supernet's latest weights (see the module docstring).

    Args:
        run_dir: A search's run folder.
        trial: The trial number [default: the best complete trial].
        choose_by: What "best" means (see :func:`choose_trial`) [default: the run's ``choose_by``].

    Raises:
        ConfigError: not a run folder, or no such complete trial.
    """
    run = load_run(run_dir)
    chosen = choose_trial(run, trial, by=choose_by)
    objective = SupernetObjective(run.config, run_dir=run.run_dir)
    arch = objective.space.parse(chosen.user_attrs["arch"])
    net = objective.supernet.standalone(arch).eval()
    data = objective.data
    example = objective.trainer.eval_x[:8]
    program = torch.export.export(net, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=2)}})
    folder = run.run_dir / EXPORT_DIR / f"trial_{chosen.number:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, folder / "model.pt2")
    save_checkpoint(folder / "weights.pt", net.state_dict())
    score = objective.score(arch)
    space_file = objective.space.source
    write_text_atomically(folder / "arch.json", json.dumps({
        "arch": str(arch), "trial": chosen.number, "space": objective.space.name,
        "space_yaml": Path(space_file).read_text() if space_file is not None else None,
        "input_shape": list(data.input_shape), "num_classes": data.num_classes,
        "params": objective.supernet.count_parameters(arch), "score_at_training": chosen.values[0],
        "score_exported": score, "study": run.study.study_name,
    }, indent=1))
    return ExportResult(folder, chosen.number, arch, score)

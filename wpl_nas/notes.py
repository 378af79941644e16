"""optuna-dashboard notes: what a search writes where the dashboard shows it.

A finished Optuna trial's attributes cannot change, but a note can: the study's note holds the
retained pool (or, at the end, the final re-scoring), and each re-scored trial's own note its
latest re-score, forgetting, recent re-scores and its cell drawn large. Without optuna-dashboard
installed (the ``dashboard`` extra) nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState

from wpl_nas.evaluation.retention import retention_matrix
from wpl_nas.run_folder import RETENTION_CSV

__all__ = ["save_note", "trial_notes"]

#: How many of a candidate's latest re-scores its dashboard note lists (retention.csv has all).
_NOTE_ROWS = 10


def _dashboard() -> Any:
    """The optuna_dashboard module (for its note functions), or None: it is optional (the `dashboard` extra)."""
    try:
        import optuna_dashboard
    except ImportError:
        return None
    return optuna_dashboard


def save_note(study: optuna.Study, text: str) -> None:
    """``text`` as the study's note in optuna-dashboard (a finished trial's attributes cannot change,
    a note can)."""
    dashboard = _dashboard()
    if dashboard is not None:
        dashboard.save_note(study, text)


class _TrialNote:
    """What optuna-dashboard's ``save_note`` reads from a trial (its storage, study and id): notes
    live on the study's system attributes, so a finished trial's note can be rewritten, but
    ``optuna.Trial`` cannot be made for a finished trial without running the sampler's hooks."""

    def __init__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.study, self.storage, self._trial_id = study, study._storage, trial._trial_id


def _cell_link(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str | None:
    """The dashboard's URL of the trial's cell image (its ``cell_*.png`` artifact), or None."""
    try:
        metas = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
    except Exception:  # artifacts are optional: a trial of the user's own study may have none
        return None
    cell = next((m for m in metas if m.filename.startswith("cell_") and m.mimetype == "image/png"), None)
    return None if cell is None else f"/artifacts/{study._study_id}/{trial._trial_id}/{cell.artifact_id}"


def _trial_note_text(trial: optuna.trial.FrozenTrial, attrs: dict[str, Any],
                     matrix: dict[int, dict[int, float]], *, higher_is_better: bool, cell: str | None) -> str:
    """A trial's note: its latest re-score and forgetting, its recent re-scores, its final score
    when the final selection describes the current supernet, and its cell drawn large."""
    key = str(trial.number)
    score = trial.user_attrs.get("score_at_training")
    row = matrix.get(trial.number, {})
    after = attrs.get("pool_after_trial")
    sign = 1.0 if higher_is_better else -1.0
    lines: list[str] = []
    if score is None or not row:
        state = "pruned" if trial.state == TrialState.PRUNED else "not pooled"
        lines += [f"### Trial {trial.number}: {state}", "",
                  "Not in the retained pool, so never re-scored after its training"
                  + (f" (score at training {score:.4f})." if score is not None else ".")]
    else:
        last = max(row)
        latest, forgetting = row[last], sign * (score - row[last])
        lines += [f"### Retained score {latest:.4f} after trial {last}", "",
                  f"Score at training {score:.4f}; forgetting {forgetting:+.4f} (positive: worse than at its "
                  "training)."]
        replaced = attrs.get("pool_replaced", {}).get(key)
        if trial.number in attrs.get("pool", []):
            lines[-1] += f" In the retained pool: re-scored with it (latest: after trial {after})."
        elif replaced is not None:
            lines[-1] += (f" Trial {replaced} trained the same architecture again and replaced it in the pool: "
                          f"no longer re-scored, so these are its last scores.")
        else:
            lines[-1] += " Left the retained pool: no longer re-scored, so these are its last scores."
        shown = sorted(row)[-_NOTE_ROWS:]
        lines += ["", "| re-scored after trial | score | forgetting |", "|---:|---:|---:|",
                  *(f"| {j}{' (its training)' if j == trial.number else ''} | {row[j]:.4f} "
                    f"| {sign * (score - row[j]):+.4f} |" for j in shown)]
        if len(row) > len(shown):
            lines.append(f"\n{len(row) - len(shown)} earlier re-score(s) in the run folder's `{RETENTION_CSV}`.")
    final = attrs.get("final_rescore", {}).get(key)
    if final is not None and score is not None and attrs.get("final_after_trial") == after:
        lines += ["", f"**On the final supernet** (after trial {attrs['final_after_trial']}): {final:.4f}, "
                  f"forgetting {sign * (score - final):+.4f}."]
    if cell is not None:
        lines += ["", f"![cell of trial {trial.number}]({cell})"]
    return "\n".join(lines)


def trial_notes(study: optuna.Study, numbers: Iterable[int]) -> None:
    """Rewrite the optuna-dashboard note of each trial in ``numbers`` from the study's user
    attributes (see :func:`_trial_note_text`); no-op without optuna-dashboard. A note edited by
    hand in the dashboard is overwritten when its trial's scores change."""
    dashboard, wanted = _dashboard(), set(numbers)
    if dashboard is None or not wanted:
        return
    attrs, matrix = study.user_attrs, retention_matrix(study)
    higher_is_better = study.directions[0] == StudyDirection.MAXIMIZE
    for trial in study.get_trials(deepcopy=False):
        if trial.number in wanted and trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            text = _trial_note_text(trial, attrs, matrix, higher_is_better=higher_is_better,
                                    cell=_cell_link(study, trial))
            dashboard.save_note(_TrialNote(study, trial), text)



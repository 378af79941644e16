"""Final selection: every candidate re-scored on the final supernet (``wpl-nas select``).

A candidate's score at training is what the supernet said right after that candidate trained;
every later candidate then moved the weights it shares. Weight-sharing NAS (ENAS, SPOS, the
NAS-Bench-201 baselines) chooses its architecture the other way: by scoring the candidates on the
*final* supernet, where all of them are judged by the same weights. At the end of a search (and on
demand) every distinct complete candidate, or the best ``top_k`` by score at training, is scored on
the fixed evaluation set with the final weights; the scores go to ``RUN_DIR/final.json`` and
``final.csv``, the study's user attributes (``final_rescore``, ``final_best_trial``, ...), the
dashboard's notes (the study's, and each candidate's) and TensorBoard (``final/<score>`` at each
candidate's trial number, and ``final/candidate_<score>`` in its HPARAMS row). Forgetting
is measured here over *all* the re-scored candidates, not only the retained pool.

Batch norm in the supernets normalises with the statistics of the batch it sees
(``track_running_stats=False``), so each re-score is recalibrated to the candidate's path by
construction: there are no running statistics left over from other candidates to recalibrate.

``export`` and ``retrain`` take the best candidate by final score unless told otherwise
(``--choose-by training``, or ``choose_by`` in the config for the search's summary).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from wpl_nas.config import CHOOSE_BY
from wpl_nas.errors import ConfigError
from wpl_nas.evaluation import METRICS, kendall_tau
from wpl_nas.notes import save_note, trial_notes
from wpl_nas.run_folder import FINAL_CSV, FINAL_JSON, load_run
from wpl_nas.spaces import Architecture
from wpl_nas.tracking import read_json, write_text_atomically
from wpl_nas.tracking.markdown import code_cell

__all__ = ["CHOOSE_BY", "FINAL_CSV", "FINAL_JSON", "FinalScores", "best_at_training", "current_final",
           "latest_finished", "load_final", "rescore_final", "select_run"]



@dataclass
class FinalScores:
    """Candidates re-scored on the final supernet.

    Attributes:
        after_trial: The last finished trial when the scores were taken (they describe the supernet
            after it).
        metric: The score's name (``accuracy``, ``perplexity``).
        rows: One per candidate: ``trial``, ``arch``, ``at_training``, ``final``, ``forgetting``
            (score at training minus final score, in the direction where positive means worse).
    """

    after_trial: int
    metric: str
    rows: list[dict[str, Any]]

    def _quality(self, score: float) -> float:
        return METRICS.get(self.metric).quality(score)

    def best(self, by: str = "final") -> dict[str, Any]:
        """The row of the best candidate by ``by`` (``final`` or ``training``); ties: the earlier trial."""
        key = "final" if by == "final" else "at_training"
        return max(self.rows, key=lambda r: (self._quality(r[key]), -r["trial"]))

    def measures(self) -> dict[str, float]:
        """Forgetting over all re-scored candidates (mean, max) and rank stability: Kendall τ between
        the scores at training and the final ones."""
        forgetting = [r["forgetting"] for r in self.rows]
        return {"forgetting_mean": sum(forgetting) / len(forgetting), "forgetting_max": max(forgetting),
                "stability_tau": kendall_tau([r["at_training"] for r in self.rows], [r["final"] for r in self.rows])}

    def to_json(self) -> dict[str, Any]:
        return {"after_trial": self.after_trial, "metric": self.metric, "measures": self.measures(),
                "best_final_trial": self.best("final")["trial"], "best_training_trial": self.best("training")["trial"],
                "rows": self.rows}

    def to_csv(self) -> str:
        lines = ["trial,arch,at_training,final,forgetting"]
        lines += [f"{r['trial']},{r['arch']},{r['at_training']!r},{r['final']!r},{r['forgetting']!r}"
                  for r in self.rows]
        return "\n".join(lines) + "\n"

    def write(self, run_dir: Path) -> None:
        """``final.json`` and ``final.csv`` in ``run_dir``, atomically."""
        write_text_atomically(run_dir / FINAL_JSON, json.dumps(self.to_json(), indent=1))
        write_text_atomically(run_dir / FINAL_CSV, self.to_csv())

    def publish(self, study: optuna.Study) -> None:
        """The study's user attributes (what optuna-dashboard and ``optuna.load_study`` users see)."""
        study.set_user_attr("final_rescore", {str(r["trial"]): r["final"] for r in self.rows})
        study.set_user_attr("final_after_trial", self.after_trial)
        study.set_user_attr("final_best_trial", self.best("final")["trial"])
        for key, value in self.measures().items():
            study.set_user_attr(f"final_{key}", value if math.isfinite(value) else None)


def best_at_training(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial with the best score at training (its first objective, in the study's
    direction: perplexity is minimised); ties: the earlier trial. None if no trial is complete."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1.0
    return max(complete, key=lambda t: (sign * t.values[0], -t.number), default=None)


def latest_finished(study: optuna.Study) -> int | None:
    """The number of the study's last complete or pruned trial (None if there is none)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return max((t.number for t in done), default=None)


def rescore_final(study: optuna.Study, score: Callable[[Architecture], float], *, metric: str,
                  top_k: int = 0) -> FinalScores | None:
    """Score every distinct complete candidate of ``study`` with ``score`` (the final supernet).

    Args:
        study: The search's study (its trials carry ``arch`` and ``score_at_training``).
        score: The candidate's score with the current weights (e.g. ``SupernetObjective.score``).
        metric: The score's name, for its direction.
        top_k: Re-score only the best ``top_k`` by score at training (0: all).

    Returns:
        The scores, or None when no trial is complete. A repeated architecture counts once (its
        last trial).
    """
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, but got {top_k=}")
    quality = METRICS.get(metric).quality
    latest: dict[str, tuple[int, float]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        latest[t.user_attrs["arch"]] = (t.number, float(t.user_attrs["score_at_training"]))
    after = latest_finished(study)
    if not latest or after is None:
        return None
    ranked = sorted(latest.items(), key=lambda kv: (-quality(kv[1][1]), kv[1][0]))
    if top_k:
        ranked = ranked[:top_k]
    rows = []
    for arch, (trial, at_training) in sorted(ranked, key=lambda kv: kv[1][0]):
        final = score(Architecture.parse(arch))
        rows.append({"trial": trial, "arch": arch, "at_training": at_training, "final": final,
                     "forgetting": quality(at_training) - quality(final)})
    return FinalScores(after, metric, rows)


def load_final(run_dir: str | Path) -> FinalScores | None:
    """The final scores recorded in ``run_dir`` (None if the search has not written them).

    Raises:
        ConfigError: ``final.json`` is not valid.
    """
    path = Path(run_dir) / FINAL_JSON
    if not path.is_file():
        return None
    data = read_json(path, what="final scores")
    try:
        return FinalScores(int(data["after_trial"]), str(data["metric"]), list(data["rows"]))
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"final scores {path} are malformed; delete the file and run `wpl-nas select "
                          f"{run_dir}` to take them again") from None


def select_run(run_dir: str | Path, *, top_k: int | None = None) -> FinalScores:
    """Re-score a run's candidates on its supernet's latest weights and record them (``wpl-nas select``).

    Args:
        run_dir: A search's run folder.
        top_k: Re-score only the best ``top_k`` by score at training (0: all) [default: the run's
            ``final_top_k``].

    Raises:
        ConfigError: not a run folder, or no complete trial.
    """
    run = load_run(run_dir)
    top_k = run.config.final_top_k if top_k is None else top_k
    if top_k < 0:
        raise ConfigError(f"top_k must be >= 0, but got top_k={top_k}")
    # Read-only: the checkpoint's weights, on this process's threads (not the run's: wpl_nas.threads).
    trained = run.folder.load_supernet()
    final = rescore_final(run.study, trained.score, metric=trained.metric.name, top_k=top_k)
    if final is None:
        raise ConfigError(f"run {run.run_dir} has no complete trial to re-score")
    final.write(run.run_dir)
    final.publish(run.study)
    final_note(run.study, final)
    return final


def current_final(run_dir: str | Path, study: optuna.Study) -> FinalScores:
    """The run's final scores, taken again (:func:`select_run`) if the supernet has moved since they
    were recorded."""
    final = load_final(run_dir)
    if final is None or final.after_trial != latest_finished(study):
        final = select_run(run_dir)
    return final


def final_note(study: optuna.Study, final: FinalScores, *, shown: int = 20) -> None:
    """The end of the search as the study's note: the candidates ranked by their score on the final
    supernet (the best ``shown``), with their scores at training and forgetting; and each re-scored
    candidate's own note with its final score."""
    quality = METRICS.get(final.metric).quality
    ranked = sorted(final.rows, key=lambda r: (-quality(r["final"]), r["trial"]))
    m = final.measures()
    rows = [f"| {r['trial']} | {code_cell(r['arch'])} | {r['final']:.4f} | {r['at_training']:.4f} "
            f"| {r['forgetting']:+.4f} |" for r in ranked[:shown]]
    save_note(study, "\n".join([
        f"## Final re-scoring after trial {final.after_trial}", "",
        f"{len(final.rows)} candidates re-scored on the final supernet; the best there: trial {ranked[0]['trial']}. "
        f"Forgetting over all of them: mean {m['forgetting_mean']:+.4f}, max {m['forgetting_max']:+.4f}; "
        f"rank stability (Kendall τ, training vs final) {m['stability_tau']:+.3f}.", "",
        "| trial | architecture | final score | score at training | forgetting |", "|---:|---|---:|---:|---:|",
        *rows]))
    trial_notes(study, (r["trial"] for r in final.rows))

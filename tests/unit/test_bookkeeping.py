"""The after-trial files grow by what each trial adds, however long the search: retention.csv and
anatomy.jsonl are appended to (never rewritten) within a process, and written whole, once, by a
process that takes a run over, so a resumed run's files are an uninterrupted run's."""

from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest
import torch

from wpl_nas.callbacks import AnatomyCallback, RetentionCallback
from wpl_nas.evaluation import RetainedPool
from wpl_nas.run_folder import RunFolder, read_anatomy

BEST, RECENT = 3, 2


def _trained(pool: RetainedPool, finished: dict, rng: random.Random, number: int) -> optuna.trial.FrozenTrial:
    """Trial ``number`` as a search leaves it before its after-trial work: pooled, pool re-scored."""
    score = rng.uniform(0.3, 0.9)
    pool.add(number, f"arch{number}", score)
    pool.record(number, {m: rng.uniform(0.3, 0.9) for m in pool.members()})
    finished[number] = ("COMPLETE", score)
    return optuna.trial.create_trial(value=score, user_attrs={"arch": f"arch{number}", "score_at_training": score})


def test_retention_csv_grows_by_one_row_per_pool_member_per_trial(tmp_path):
    folder, rng = RunFolder(tmp_path), random.Random(0)
    pool, finished = RetainedPool(best=BEST, recent=RECENT), {}
    study = optuna.create_study(direction="maximize")
    callback = RetentionCallback(pool, finished, folder, chance=0.1)
    path = tmp_path / "retention.csv"
    grown: list[int] = []
    for number in range(120):
        study.add_trial(_trained(pool, finished, rng, number))
        before = path.read_bytes() if path.is_file() else b""
        callback(study, study.get_trials(deepcopy=False)[-1])
        after = path.read_bytes()
        assert after.startswith(before)  # appended, not rewritten
        assert after.count(b"\n") - before.count(b"\n") == len(pool.members()) + (number == 0)  # + the header
        grown.append(len(after) - len(before))
        callback(study, study.get_trials(deepcopy=False)[-1])  # the same trial again writes nothing more
        assert path.read_bytes() == after
    # What a trial adds is bounded by the pool, not by the trial count.
    assert max(grown[100:]) <= max(grown[1:20]) + 2 * (BEST + RECENT)  # a digit more in two columns
    assert path.read_text() == pool.to_csv()

    # A new process (a resumed search) writes it whole once, from the pool: a half row or rows of
    # after-trial work being redone are gone.
    with path.open("a") as file:
        file.write("119,117,0.4")
    fresh = RetentionCallback(pool, finished, folder, chance=0.1)
    fresh(study, study.get_trials(deepcopy=False)[-1])
    assert path.read_text() == pool.to_csv()


def test_the_anatomy_record_gains_a_line_per_trial_and_a_new_process_cuts_it_back(tmp_path):
    folder = RunFolder(tmp_path)
    pool = RetainedPool(best=BEST, recent=RECENT)
    callback = AnatomyCallback(torch.nn.Linear(1, 1), pool, {}, folder,  # type: ignore[arg-type]
                               probe=torch.zeros(2, 1), device=torch.device("cpu"))
    path = tmp_path / "anatomy.jsonl"
    for number in range(1, 60):
        before = path.read_bytes() if path.is_file() else b""
        callback._record(number, {str(m): {"stem": 0.5, "logits": 0.25} for m in range(max(0, number - 4), number)})
        after = path.read_bytes()
        assert after.startswith(before) and after.count(b"\n") == number  # one line appended
        assert len(after) - len(before) < 200  # its members' CKA, whatever the trial count
    history = read_anatomy(tmp_path)
    assert history["0"] == {str(j): {"stem": 0.5, "logits": 0.25} for j in range(1, 5)}

    # Resumed at trial 59, whose line a stop had already written (and half of another): cut back, redone once.
    with path.open("a") as file:
        file.write('{"after_trial": 60, "ck')
    fresh = AnatomyCallback(torch.nn.Linear(1, 1), pool, {}, folder,  # type: ignore[arg-type]
                            probe=torch.zeros(2, 1), device=torch.device("cpu"))
    with pytest.warns(RuntimeWarning, match="1 line"):
        fresh._record(59, {str(m): {"stem": 0.5, "logits": 0.25} for m in range(55, 59)})
    assert read_anatomy(tmp_path) == history and path.read_text().count("\n") == 59


def test_a_run_made_before_the_anatomy_log_carries_its_record_over(tmp_path):
    old = {"0": {"1": {"stem": 0.9}, "2": {"stem": 0.8}}, "1": {"2": {"stem": 0.7}}}
    (tmp_path / "anatomy.json").write_text(__import__("json").dumps(old))
    assert read_anatomy(tmp_path) == old  # read as it is...
    callback = AnatomyCallback(torch.nn.Linear(1, 1), RetainedPool(best=1, recent=1), {},  # type: ignore[arg-type]
                               RunFolder(tmp_path), probe=torch.zeros(2, 1), device=torch.device("cpu"))
    callback._record(3, {"1": {"stem": 0.6}})  # ...and carried over by the next search
    assert read_anatomy(tmp_path) == {**old, "1": {"2": {"stem": 0.7}, "3": {"stem": 0.6}}}
    assert Path(tmp_path / "anatomy.jsonl").read_text().count("\n") == 3

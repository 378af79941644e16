"""The after-trial files grow by what each trial adds, however long the search: retention.csv and
anatomy.jsonl are appended to (never rewritten) within a process, and written whole, once, by a
process that takes a run over, so a resumed run's files are an uninterrupted run's; the study's
records and retention.json grow by the pool's size per trial, and readers get the same retention
matrix from a run of either format."""

from __future__ import annotations

import json
import random
from pathlib import Path

import optuna
import pytest
import torch

from wpl_nas.analysis import _with_rows
from wpl_nas.callbacks import AnatomyCallback, RetentionCallback
from wpl_nas.evaluation import RESCORES_ATTR, RetainedPool, retention_matrix
from wpl_nas.evaluation.retention import matrix_from_csv
from wpl_nas.run_folder import RunFolder, read_anatomy

BEST, RECENT = 3, 2


def _trained(pool: RetainedPool, finished: dict, rng: random.Random, number: int, *,
             old: bool = False) -> optuna.trial.FrozenTrial:
    """Trial ``number`` as a search leaves it before its after-trial work: pooled, pool re-scored, the
    re-scores on the trial (``old``: as runs made before that left it, without them). Every sixth
    candidate repeats an architecture (it replaces the entry in the pool)."""
    score = rng.uniform(0.3, 0.9)
    pool.add(number, f"arch{number - 3 if number % 6 == 5 else number}", score)
    rescores = {m: rng.uniform(0.3, 0.9) for m in pool.members()}
    pool.record(number, rescores)
    finished[number] = ("COMPLETE", score)
    attrs = {"arch": f"arch{number}", "score_at_training": score}
    if not old:
        attrs[RESCORES_ATTR] = {str(m): v for m, v in rescores.items()}
    return optuna.trial.create_trial(value=score, user_attrs=attrs)


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


def test_the_study_and_retention_json_grow_by_the_pool_per_trial_and_the_matrix_reads_back(tmp_path):
    folder, rng = RunFolder(tmp_path), random.Random(1)
    pool, finished = RetainedPool(best=BEST, recent=RECENT), {}
    study = optuna.create_study(direction="maximize", storage=f"sqlite:///{tmp_path / 'study.db'}")
    callback = RetentionCallback(pool, finished, folder, chance=0.1)
    sizes: list[int] = []
    for number in range(100):
        study.add_trial(_trained(pool, finished, rng, number))
        callback(study, study.get_trials(deepcopy=False)[-1])
        sizes.append(len((tmp_path / "retention.json").read_bytes()))
        attrs = study.user_attrs
        assert "retention" not in attrs  # no whole-matrix attribute rewritten every trial
        # The pool's measures and members, whatever the trial count (pool_replaced gains a pair of
        # numbers per repeated architecture, read by the notes of replaced candidates).
        assert len(json.dumps({k: v for k, v in attrs.items() if k != "pool_replaced"})) < 2000
    assert max(sizes[80:]) <= max(sizes[10:20]) + 200  # the members and those leaving, digits longer
    saved = json.loads((tmp_path / "retention.json").read_text())
    assert [c["trial"] for c in saved["candidates"]] == sorted({*pool.members(), *saved["left"]})
    # The readers: the matrix from the trials' re-scores, and from retention.csv, is the pool's own.
    assert retention_matrix(study) == pool.matrix()
    matrix, at_training = matrix_from_csv((tmp_path / "retention.csv").read_text())
    assert matrix == pool.matrix() and at_training == {t: e.score for t, e in pool.entries.items()}


def test_readers_get_the_same_matrix_from_an_old_format_run_and_from_one_resumed_across_the_change(tmp_path):
    """Runs made before the re-scores went on each trial kept the whole matrix in the study attribute
    ``retention`` (and every candidate's row in retention.json): read the same."""
    matrices, reports = [], []
    for name, old_until in (("new", 0), ("old", 60), ("mixed", 30)):
        folder, rng = RunFolder(tmp_path / name), random.Random(2)
        folder.path.mkdir()
        pool, finished = RetainedPool(best=BEST, recent=RECENT), {}
        study = optuna.create_study(direction="maximize")
        callback = RetentionCallback(pool, finished, folder, chance=0.1)
        for number in range(60):
            study.add_trial(_trained(pool, finished, rng, number, old=number < old_until))
            callback(study, study.get_trials(deepcopy=False)[-1])
        assert ("retention" in study.user_attrs) == (old_until > 0)
        matrices.append(retention_matrix(study))
        if name == "old":  # retention.json as such runs wrote it: every candidate, with its row
            old_json = {**pool.to_json(after_trial=59, chance=0.1), "candidates": [
                {"trial": e.trial, "arch": e.arch, "score_at_training": e.score, "latest": e.latest,
                 "forgetting": e.forgetting, "rescores": {str(j): v for j, v in e.rescores.items()}}
                for e in pool.entries.values()]}
            (folder.path / "retention.json").write_text(json.dumps(old_json))
        record = json.loads((folder.path / "retention.json").read_text())
        rows = _with_rows(record, folder.path)["candidates"]
        reports.append({c["trial"]: (c["score_at_training"], c["latest"], c["forgetting"],
                                     {int(j): v for j, v in c["rescores"].items()}) for c in rows})
        assert matrices[-1] == pool.matrix()
    assert matrices[0] == matrices[1] == matrices[2]
    assert reports[0] == reports[1] == reports[2] and len(reports[0]) == 60


def test_a_retention_csv_line_still_being_written_is_left_out():
    pool = RetainedPool(best=2, recent=1)
    for number in range(4):
        pool.add(number, f"arch{number}", 0.5 + number / 10)
        pool.record(number, {m: 0.4 + m / 10 for m in pool.members()})
    text = pool.to_csv()
    assert matrix_from_csv(text)[0] == pool.matrix()
    cut = text[:-4]  # the last row's forgetting column cut short
    matrix, _ = matrix_from_csv(cut)
    assert sum(map(len, matrix.values())) == sum(map(len, pool.matrix().values())) - 1
    with pytest.raises(ValueError, match="long-format"):
        matrix_from_csv("trial,after_0,after_1\n0,0.5,0.4\n")  # the wide format of older runs


def test_anatomy_every_k_trials_compares_the_members_only_then_and_still_snapshots_each_joiner(
        tiny_space, mnist1d, tmp_path):
    """With ``every=3`` the members are compared after trials 0, 3, 6, ... only, to the same
    values as a callback comparing after every trial (nothing trains here in between): the snapshots
    are taken as each member joins, whichever trial it is."""
    import wpl_nas

    probe = mnist1d.val.tensors[0][:32]
    rng = random.Random(3)
    archs = [str(tiny_space.sample(rng)) for _ in range(8)]
    records = {}
    for every in (1, 3):
        net = wpl_nas.build_supernet(tiny_space, mnist1d, seed=0)  # the same weights for both
        folder = RunFolder(tmp_path / f"every{every}")
        folder.path.mkdir()
        pool, finished = RetainedPool(best=BEST, recent=RECENT), {}
        study = optuna.create_study(direction="maximize")
        callback = AnatomyCallback(net, pool, finished, folder, probe=probe, device=torch.device("cpu"), every=every)
        for number, arch in enumerate(archs):
            pool.add(number, arch, 0.5)
            pool.record(number, {m: 0.5 for m in pool.members()})
            finished[number] = ("COMPLETE", 0.5)
            with torch.no_grad():  # the weights move between trials, as training would move them
                for p in net.parameters_of(tiny_space.parse(arch)).values():
                    p.mul_(0.9)
            study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"arch": arch}))
            callback(study, study.get_trials(deepcopy=False)[-1])
            assert sorted(int(p.stem.split("_")[1]) for p in folder.anatomy_dir.glob("trial_*.pt")) == pool.members()
            assert (study.user_attrs.get("anatomy_after_trial") == number) == (number % every == 0)
        records[every] = read_anatomy(folder.path)
    every_trial, every_third = records[1], records[3]
    assert {after for rows in every_third.values() for after in rows} == {"3", "6"}
    assert every_third == {m: {a: v for a, v in rows.items() if int(a) % 3 == 0}
                           for m, rows in every_trial.items() if any(int(a) % 3 == 0 for a in rows)}

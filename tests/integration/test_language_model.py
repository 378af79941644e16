"""Word-level language modelling end to end: Penn Treebank-layout files, the ENAS recurrent cell
space, perplexity as the score (minimised), forgetting in perplexity, export and retraining."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import optuna
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import wpl_nas
from wpl_nas.analysis import anatomy_run
from wpl_nas.data._text import EOS, SEQUENCE_LENGTH, UNK
from wpl_nas.errors import ConfigError
from wpl_nas.export import export_run
from wpl_nas.fidelity import rank_run
from wpl_nas.retrain import retrain_run

TINY_RNN = {"kind": "rnn", "name": "tiny-rnn", "cell": {"nodes": 4, "activations": ["tanh", "relu", "identity"]},
            "model": {"embedding": 16, "hidden": 24}}
WORDS = ["the", "cat", "dog", "sat", "ran", "on", "mat", "log", "a", "big", "small", "quickly"]


def sentence(rng: random.Random) -> str:
    """A sentence of a tiny grammar: predictable enough that a model beats the unigram level fast."""
    noun, place = rng.choice(["cat", "dog"]), rng.choice(["mat", "log"])
    size = rng.choice(["big", "small"])
    return f"the {size} {noun} {rng.choice(['sat', 'ran'])} on a {place}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``DIR/ptb/{train,valid,test}.txt`` in the Penn Treebank layout; returns DIR."""
    root = tmp_path_factory.mktemp("text")
    folder = root / "ptb"
    folder.mkdir()
    rng = random.Random(0)
    for name, lines in (("train.txt", 900), ("valid.txt", 120), ("test.txt", 120)):
        text = [sentence(rng) for _ in range(lines)]
        if name == "test.txt":
            text[0] += " zebra"  # a word never seen in training reads as <unk>
        (folder / name).write_text("\n".join(f" {line} " for line in text) + "\n")
    return root


@pytest.fixture(scope="module")
def space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spaces") / "tiny-rnn.yaml"
    path.write_text(json.dumps(TINY_RNN))  # JSON is YAML
    return path


def test_the_layout_reads_as_next_token_windows_with_a_training_vocabulary(corpus):
    data = wpl_nas.load_dataset("ptb", data_dir=corpus)
    assert data.metric == "perplexity" and data.input_shape == (SEQUENCE_LENGTH,)
    x, y = data.train.tensors
    assert x.dtype == y.dtype == torch.long and x.shape[1] == SEQUENCE_LENGTH
    assert torch.equal(x[0, 1:], y[0, :-1]) and torch.equal(x[1, 0], y[0, -1])  # y is x shifted by one token
    # 12 words of the grammar, <unk> and <eos>; "zebra" is only in the test file.
    assert data.num_classes == len(set(WORDS) - {"quickly"}) + 2
    assert UNK != EOS


def test_missing_files_and_too_short_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"needs train.txt, valid.txt, test.txt in .*Penn Treebank layout"):
        wpl_nas.load_dataset("ptb", data_dir=tmp_path)
    (tmp_path / "ptb").mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        (tmp_path / "ptb" / name).write_text("the cat sat on a mat\n" * (20 if name == "train.txt" else 1))
    with pytest.raises(ConfigError, match=r"valid\.txt has 7 tokens, fewer than one window of 36"):
        wpl_nas.load_dataset("ptb", data_dir=tmp_path)


def test_a_token_space_refuses_image_data_and_an_image_space_refuses_text(corpus, space_file, data_dir):
    text = wpl_nas.load_dataset("ptb", data_dir=corpus)
    with pytest.raises(ConfigError, match="space 'nb201' is for 2-D inputs, but dataset 'ptb' is token-sequence"):
        wpl_nas.build_supernet("nb201", text)
    with pytest.raises(ConfigError, match="space 'tiny-rnn' is for token-sequence inputs, but dataset 'mnist1d'"):
        wpl_nas.build_supernet(str(space_file), wpl_nas.load_dataset("mnist1d", data_dir=data_dir))


@pytest.fixture(scope="module")
def search(corpus, space_file, tmp_path_factory) -> wpl_nas.SearchResult:
    config = wpl_nas.SearchConfig(space=str(space_file), dataset="ptb", data_dir=str(corpus), strategy="wpl",
                                  runs_dir=str(tmp_path_factory.mktemp("runs")), study_name="lm", trials=4,
                                  epochs=2, batch_size=16, lr=1.0, grad_clip=0.25, device="cpu", seed=0)
    return wpl_nas.run_search(config, progress=False, command=["test"])


def test_search_minimises_perplexity_and_measures_forgetting_in_it(search, corpus):
    study = search.study
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.metric_names == ["perplexity"]
    values = [t.value for t in study.trials]
    vocab = wpl_nas.load_dataset("ptb", data_dir=corpus).num_classes
    # Perplexity is at least 1, and the search found candidates far below the uniform model's (the vocabulary size).
    assert all(v > 1.0 for v in values) and min(values) < 0.5 * vocab, values
    assert search.best_score == min(values) and search.metric == "perplexity"
    assert "validation perplexity" in search.summary()
    retention = json.loads((search.run_dir / "retention.json").read_text())
    for c in retention["candidates"]:
        # Forgetting is how much the perplexity rose since the candidate's training.
        assert c["forgetting"] == pytest.approx(c["latest"] - c["score_at_training"])
    assert math.isnan(retention["summary"]["rho"])  # no chance level for perplexity
    events = EventAccumulator(str(search.run_dir / "tb" / "search"))
    events.Reload()
    assert {"val/ppl", "retained/mean_ppl", "forgetting/mean"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("val/ppl")] == pytest.approx(values)


def test_export_and_retrain_report_perplexity(search):
    best = search.study.best_trial.number
    exported = export_run(search.run_dir)  # the best trial: the lowest perplexity
    assert exported.trial == best
    program = torch.export.load(str(exported.folder / "model.pt2")).module()
    x = torch.randint(0, 10, (3, SEQUENCE_LENGTH))
    net = search_net(search, exported.arch)
    torch.testing.assert_close(program(x), net(x))  # (B, vocabulary, T) logits, as the supernet's path
    result = retrain_run(search.run_dir, epochs=1, progress=False)
    assert result.trial == best and result.metric == "perplexity" and 1.0 < result.test_score < math.inf
    saved = json.loads((result.folder / "result.json").read_text())
    assert saved["test_perplexity"] == result.test_score and saved["recipe"]["grad_clip"] == 0.25


def test_the_report_names_the_lowest_perplexity_as_best(search):
    from wpl_nas.analysis import report_run

    best = search.study.best_trial  # Optuna's, in the study's direction
    worst = max(search.study.trials, key=lambda t: t.value)
    assert best.number != worst.number
    text = report_run(search.run_dir).path.read_text()
    line = next(line for line in text.splitlines() if line.startswith("**Best architecture**"))
    assert best.user_attrs["arch"] in line and f"{best.value:.4f}" in line


def search_net(search: wpl_nas.SearchResult, arch: wpl_nas.Architecture) -> torch.nn.Module:
    """The run's stand-alone network of ``arch`` with the supernet's final weights, in eval mode."""
    objective = wpl_nas.SupernetObjective(wpl_nas.load_run(search.run_dir).config, run_dir=search.run_dir)
    return objective.supernet.standalone(arch).eval()


def test_anatomy_and_rank_work_in_perplexity(search):
    result = anatomy_run(search.run_dir)
    for member in result.members:
        # Restoring every stage's weights brings back exactly the perplexity at training.
        assert member["reset"]["all"] == pytest.approx(member["at_training"], rel=1e-6)
    assert "perplexity drop" in result.table
    ranked = rank_run(search.run_dir, archs=3, epochs=1, top_k=1, progress=False)
    rows = ranked.rows
    assert len(rows) == 3 and all(r["ground_truth"] > 1.0 for r in rows)
    # "Top" means lowest perplexity: the top-1 overlap says whether both rankings put the same one first.
    first = min(rows, key=lambda r: r["at_training"])["arch"] == min(rows, key=lambda r: r["ground_truth"])["arch"]
    assert ranked.measures["at_training"]["top_k"] == float(first)
    table_rows = [line for line in ranked.table.splitlines() if line.count("`") == 2]
    truths = [float(line.rstrip(" |").rsplit("|", 1)[1]) for line in table_rows]
    assert truths == sorted(truths)  # best (lowest) first

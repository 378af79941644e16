"""Pictures and measures that show forgetting: the pool's earlier members, one entry per
architecture, the forgetting heatmap, legible cell images and TensorBoard's HPARAMS records."""

from __future__ import annotations

import io
import math

import numpy as np
import optuna
import pytest
from conftest import hparams_table
from matplotlib.text import Text
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from wpl_nas.evaluation import STEP_MEASURES, RetainedPool
from wpl_nas.tracking.figures import ARTIFACT_DPI, cell_figure, cell_png, forgetting_grid, forgetting_heatmap
from wpl_nas.tracking.hparams import experiment_summary, session_end_summary, session_start_summary

# --- the pool: earlier members, and one entry per architecture ----------------------------------


def test_a_candidate_joining_moves_the_pool_mean_but_not_the_earlier_members_measures():
    pool = RetainedPool(best=5, recent=5)
    pool.add(0, "a", 0.9)
    pool.record(0, {0: 0.9})
    pool.add(1, "b", 0.8)
    pool.record(1, {0: 0.85, 1: 0.8})
    assert pool.changes(1).earlier == [0] and pool.changes(1).joined == [1]
    assert pool.step_measures(1)["forgetting_this_trial"] == pytest.approx(0.05)  # trial 1 cost trial 0 0.05
    # A chance-level candidate joins; training it moved nobody's score.
    pool.add(2, "c", 0.1)
    pool.record(2, {0: 0.85, 1: 0.8, 2: 0.1})
    changes, step, summary = pool.changes(2), pool.step_measures(2), pool.summary()
    assert changes.earlier == [0, 1] and changes.joined == [2] and changes.left == []
    assert summary["retained_mean"] < 0.6  # the pool's mean fell by a third: it reads as forgetting...
    assert step["earlier_retained_mean"] == pytest.approx((0.85 + 0.8) / 2)  # ...but the earlier members held
    assert step["forgetting_this_trial"] == pytest.approx(0.0)
    assert step["earlier_forgetting_mean"] == pytest.approx(0.025)  # their forgetting since their own training
    assert summary["forgetting_mean"] < step["earlier_forgetting_mean"]  # diluted by the newcomer's zero
    # Training the next candidate costs the earlier members: now it shows.
    pool.add(3, "d", 0.7)
    pool.record(3, {0: 0.75, 1: 0.7, 2: 0.1, 3: 0.7})
    assert pool.step_measures(3)["forgetting_this_trial"] == pytest.approx((0.1 + 0.1 + 0.0) / 3)
    assert set(pool.to_json(after_trial=3)["summary"]) >= set(STEP_MEASURES)


def test_step_measures_follow_the_score_direction_and_are_nan_without_earlier_members():
    pool = RetainedPool(best=3, recent=3, higher_is_better=False)  # perplexity: lower is better
    pool.add(0, "a", 50.0)
    pool.record(0, {0: 50.0})
    assert all(math.isnan(v) for v in pool.step_measures(0).values())
    pool.add(1, "b", 40.0)
    pool.record(1, {0: 55.0, 1: 40.0})
    step = pool.step_measures(1)
    assert step["forgetting_this_trial"] == pytest.approx(5.0)  # its perplexity rose: forgotten, positive
    assert step["earlier_retained_mean"] == pytest.approx(55.0)


def test_a_repeated_architecture_replaces_its_pool_entry():
    pool = RetainedPool(best=2, recent=2)
    pool.add(0, "a", 0.9)
    pool.record(0, {0: 0.9})
    pool.add(1, "b", 0.5)
    pool.record(1, {0: 0.85, 1: 0.5})
    pool.add(2, "a", 0.7)  # the sampler proposed architecture a again: trained again, it replaces trial 0
    assert pool.replaced_by() == {0: 2}
    assert pool.members() == [1, 2]  # trial 0 would be the best, but a is in the pool once, as trial 2
    pool.record(2, {1: 0.45, 2: 0.7})
    changes = pool.changes(2)
    assert changes.earlier == [1] and changes.joined == [2] and changes.left == [0]
    assert pool.entries[0].rescores == {0: 0.9, 1: 0.85}  # its history stays; it is no longer re-scored
    data = pool.to_json(after_trial=2)
    assert data["joined"] == [2] and data["left"] == [0]
    assert {c["trial"]: c["replaced_by"] for c in data["candidates"]} == {0: 2, 1: None, 2: None}
    rescored = [line.split(",")[:2] for line in pool.to_csv().splitlines()[1:]]  # (after trial, trial)
    assert rescored == [["0", "0"], ["1", "0"], ["1", "1"], ["2", "1"], ["2", "2"]]  # 0 is not re-scored after 2
    clone = RetainedPool(best=9, recent=9)
    clone.load_state_dict(pool.state_dict())
    assert clone.members() == [1, 2] and clone.replaced_by() == {0: 2}


def test_the_best_slots_hold_distinct_architectures():
    pool = RetainedPool(best=2, recent=0)
    for trial, (arch, score) in enumerate([("a", 0.9), ("b", 0.6), ("a", 0.8), ("c", 0.5)]):
        pool.add(trial, arch, score)
    assert pool.members() == [1, 2]  # a (as trial 2) and b; not a twice


# --- the forgetting heatmap ----------------------------------------------------------------------


def _pixel(fig, ax, col: int, row: int) -> np.ndarray:
    """The RGB colour of cell (row, col) of ``ax``'s heatmap as drawn (near its corner: its value is
    printed in the middle)."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    x, y = ax.transData.transform((col - 0.35, row - 0.35))
    return rgba[round(float(rgba.shape[0] - y)), round(float(x)), :3].astype(int)


def test_forgetting_heatmap_is_centred_on_zero_and_says_which_way():
    # Candidate 0 forgets, 1 improves, 2 is a chance-level candidate (nothing to forget), 3 holds.
    at_training = {0: 0.9, 1: 0.6, 2: 0.1, 3: 0.8}
    matrix = {0: {0: 0.9, 1: 0.8, 2: 0.7, 3: 0.6}, 1: {1: 0.6, 2: 0.65, 3: 0.7}, 2: {2: 0.1, 3: 0.1}, 3: {3: 0.8}}
    rows, cols, grid = forgetting_grid(matrix, at_training)
    assert rows == cols == [0, 1, 2, 3]
    assert grid[0, 3] == pytest.approx(0.3) and grid[1, 3] == pytest.approx(-0.1) and math.isnan(grid[3, 0])
    fig = forgetting_heatmap(matrix, at_training)
    ax = fig.axes[0]
    image = ax.images[0]
    assert image.norm.vmin == pytest.approx(-image.norm.vmax)  # symmetric: zero is the middle colour
    red, blue = _pixel(fig, ax, 3, 0), _pixel(fig, ax, 3, 1)
    white, chance = _pixel(fig, ax, 3, 3), _pixel(fig, ax, 3, 2)
    assert red[0] > 2 * max(red[1], red[2])  # forgot: red
    assert blue[2] > blue[0] + 30  # improved: blue
    assert (white > 230).all() and (chance > 230).all()  # unchanged, even at chance level: white, not highlighted
    bar = fig.axes[1]
    assert "forgetting = score at training − re-score" in bar.get_ylabel()
    assert "forgot" in bar.get_title() and "improved" in bar.get_xlabel()


def test_forgetting_heatmap_of_perplexity_counts_a_rise_as_forgetting():
    at_training, matrix = {0: 40.0, 1: 60.0}, {0: {0: 40.0, 1: 48.0}, 1: {1: 60.0}}
    fig = forgetting_heatmap(matrix, at_training, higher_is_better=False, metric="perplexity")
    ax = fig.axes[0]
    assert ax.images[0].get_array()[0, 1] == pytest.approx(8.0)
    colour = _pixel(fig, ax, 1, 0)
    assert colour[0] > 2 * max(colour[1], colour[2])  # the perplexity rose: red, forgotten
    assert "re-score − score at training (perplexity)" in fig.axes[1].get_ylabel()


# --- the cell image attached to each trial -------------------------------------------------------


def test_cell_image_attached_to_trials_is_legible(tiny_space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    arch = tiny_space.suggest(study.ask())
    png = Image.open(io.BytesIO(cell_png(tiny_space, arch)))
    assert png.width >= 800  # not a thumbnail: the dashboard shows it at this size in the trial's note
    fig = cell_figure(tiny_space, arch)
    fig.set_dpi(ARTIFACT_DPI)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]
    assert len(texts) > len(arch)  # every live edge's op, the nodes and the title
    for text in texts:
        box = text.get_window_extent(renderer)
        assert box.height >= 15, text.get_text()  # pixels: readable at the size the PNG is shown
        assert box.x0 >= -1 and box.x1 <= fig.bbox.width + 1, text.get_text()  # none runs off the image


# --- HPARAMS records -----------------------------------------------------------------------------


def test_an_hparams_row_shows_the_last_value_written_of_each_metric(tmp_path):
    metrics = {"trial/score_at_training": "score at training", "retained/candidate_acc": "latest re-score"}
    for trial in (0, 1):
        writer = SummaryWriter(str(tmp_path / "trials" / f"trial_{trial:04d}"))
        hparams = {"0->1": ["conv", "skip"][trial], "params": 100 + trial, "state": "COMPLETE"}
        records = writer._get_file_writer()
        records.add_summary(experiment_summary(hparams, metrics, domains={"0->1": ["conv", "skip"]}), trial)
        records.add_summary(session_start_summary(hparams), trial)
        records.add_summary(session_end_summary(), trial)
        writer.add_scalar("trial/score_at_training", 0.5 + trial / 10, trial)
        writer.add_scalar("retained/candidate_acc", 0.5 + trial / 10, trial)
        writer.close()
    # Later, trial 0 is re-scored in a new event file of its run (as after a resume).
    writer = SummaryWriter(str(tmp_path / "trials" / "trial_0000"))
    writer.add_scalar("retained/candidate_acc", 0.42, 1)
    writer.close()
    table = hparams_table(tmp_path)
    assert table["trials/trial_0000"] == pytest.approx({"trial/score_at_training": 0.5, "retained/candidate_acc": 0.42})
    assert table["trials/trial_0001"]["retained/candidate_acc"] == pytest.approx(0.6)

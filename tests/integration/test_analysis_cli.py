"""`wpl-nas anatomy` and `wpl-nas report` on a search's run folder."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import wpl_nas
from wpl_nas.analysis import anatomy_run
from wpl_nas.cli import cli
from wpl_nas.run_folder import read_anatomy


@pytest.mark.slow
def test_anatomy_of_a_search(tiny_space_file, data_dir, tmp_path):
    config = wpl_nas.SearchConfig(space=str(tiny_space_file), data_dir=str(data_dir), runs_dir=str(tmp_path),
                                  study_name="a", trials=4, epochs=1, batch_size=256, device="cpu",
                                  eval_samples=200, strategy="naive", pool_best=2, pool_recent=1)
    run_dir = wpl_nas.run_search(config, progress=False, command=["test"]).run_dir
    members = set(wpl_nas.load_run(run_dir).study.user_attrs["pool"])
    assert {int(p.stem.split("_")[1]) for p in (run_dir / "anatomy").glob("*.pt")} == members
    history = read_anatomy(run_dir)
    lines = (run_dir / "anatomy.jsonl").read_text().splitlines()  # one line per trial, appended
    assert [json.loads(line)["after_trial"] for line in lines] == sorted({int(j) for r in history.values() for j in r})
    assert history and all(set(cka) == {"stem", "stage1", "stage2", "logits"}
                           for rows in history.values() for cka in rows.values())
    events = EventAccumulator(str(run_dir / "tb" / "search"))
    events.Reload()
    assert {"similarity/cka_stem", "similarity/cka_logits"} <= set(events.Tags()["scalars"])

    result = CliRunner().invoke(cli, ["anatomy", str(run_dir)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0] for line in result.output.splitlines() if line.strip()}
    assert {"stem", "stage1", "stage2", "logits", "all"} <= rows  # a plain-text table, one row per stage
    assert "|" not in result.output and "`" not in result.output
    assert (run_dir / "anatomy.md").is_file() and (run_dir / "anatomy.png").stat().st_size > 1000
    analysed = anatomy_run(run_dir)
    for m in analysed.members:  # restoring every stage brings back exactly the score at training
        assert m["reset"]["all"] == m["at_training"]
        assert all(0.0 <= c <= 1.0 + 1e-9 for c in m["cka"].values())

    # The report gathers what the run folder holds: retention, then ranking and anatomy once they ran.
    table = run_dir.parent / "truth.csv"
    table.write_text("ArchitectureString,accuracy\n" + "".join(
        f"{t.user_attrs['arch']},{t.value}\n" for t in wpl_nas.load_run(run_dir).study.trials))
    assert CliRunner().invoke(cli, ["rank", str(run_dir), "--ground-truth", str(table)]).exit_code == 0
    result = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    text = (run_dir / "report" / "report.md").read_text()
    for heading in ("## Retention", "## Ranking fidelity", "## Anatomy of forgetting", "## Configuration"):
        assert heading in text
    assert "| rank_tau |" in text and "**Best architecture**" in text
    assert (run_dir / "report" / "retention.png").stat().st_size > 1000
    assert (run_dir / "report" / "ranking.png").stat().st_size > 1000
    assert "![forgetting](forgetting.png)" in text and "| forgetting_this_trial |" in text
    heatmap = Image.open(run_dir / "report" / "forgetting.png").convert("RGB")  # the forgetting matrix
    assert heatmap.width > 300 and len(heatmap.getcolors(maxcolors=1 << 24) or []) > 20  # drawn, with a colour scale
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--html"])
    page = (run_dir / "report" / "report.html").read_text()
    assert result.exit_code == 0 and page.count("src='data:image/png;base64,") == 3 and "<table>" in page


@pytest.mark.parametrize("command", ["anatomy", "report"])
def test_a_folder_that_is_not_a_run_is_refused(tmp_path, command):
    result = CliRunner().invoke(cli, [command, str(tmp_path)])
    assert result.exit_code == 2 and "not a wpl-nas run folder" in result.output

"""`wpl-nas dashboard`: optuna-dashboard on a run's study, checked in a real headless browser.

The browser is Debian's Chromium (`.ci/run` installs it). Without it the test is skipped, unless
WPL_NAS_REQUIRE_BROWSER is set (as in CI), where a missing browser is a failure.
"""

from __future__ import annotations

import html
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import wpl_nas
from wpl_nas.cli import cli
from wpl_nas.evaluation import retention_matrix


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("WPL_NAS_REQUIRE_BROWSER"):
            pytest.fail("no Chromium found, but WPL_NAS_REQUIRE_BROWSER is set")
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def page_dom(chromium: str, url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, as a real browser renders it."""
    return subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=True).stdout


def dom_text(dom: str) -> str:
    """The text a DOM shows."""
    dom = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


def page_text(chromium: str, url: str, profile: Path) -> str:
    """The page's text after its scripts ran."""
    return dom_text(page_dom(chromium, url, profile))


@pytest.mark.slow
def test_dashboard_shows_architecture_and_final_scores_in_a_browser(tiny_space_file, data_dir, tmp_path):
    chromium = browser()
    config = wpl_nas.SearchConfig(space=str(tiny_space_file), data_dir=str(data_dir), runs_dir=str(tmp_path),
                                  study_name="dash", trials=3, epochs=1, batch_size=256, device="cpu",
                                  eval_samples=200)
    result = wpl_nas.run_search(config, progress=False, command=["test"])
    trial = result.study.trials[0]
    final = result.study.user_attrs["final_rescore"]["0"]
    chosen = result.study.user_attrs["final_best_trial"]

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", "from wpl_nas.cli import main; main()", "dashboard",
                               str(result.run_dir), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail(f"the dashboard did not start: {server.stdout.read() if server.stdout else ''}")
                time.sleep(0.3)
        base = f"http://127.0.0.1:{port}/dashboard/studies/{result.study._study_id}"
        trials = page_text(chromium, f"{base}/trials", tmp_path / "profile")
        assert trial.user_attrs["arch"] in trials  # the trial's architecture, as a user attribute
        assert "score_at_training" in trials and "cell_trial_0000.png" in trials  # and its cell, as an artifact
        # The trial's own note: its latest retained score (a finished trial's attributes cannot change,
        # its note can), its score on the final supernet, and its cell drawn large enough to read.
        row = retention_matrix(result.study)[0]
        last = max(row)
        dom = page_dom(chromium, f"{base}/trials?numbers=0", tmp_path / "profile")
        shown = dom_text(dom)
        assert f"Retained score {row[last]:.4f} after trial {last}" in shown
        assert f"On the final supernet (after trial 2): {final:.4f}" in shown
        (src,) = set(re.findall(r'<img alt="cell of trial 0"[^>]*src="([^"]+)"', dom))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{src}", timeout=30) as response:
            image = Image.open(io.BytesIO(response.read()))
        assert image.width >= 800  # served by the dashboard, at a readable size
        note = page_text(chromium, f"{base}/note", tmp_path / "profile")
        # at the end of the search the note is the final selection: every candidate re-scored
        assert "Final re-scoring after trial 2" in note and f"the best there: trial {chosen}" in note
        assert f"{final:.4f}" in note  # trial 0's score on the final supernet, rendered in the study's note
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_dashboard_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(cli, ["dashboard", str(tmp_path)])
    assert result.exit_code == 2 and "not a wpl-nas run folder" in result.output

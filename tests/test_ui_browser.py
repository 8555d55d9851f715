"""The MLflow UI as a person first sees it, in a real (headless) Chromium.

A tiny p-grid launch (baseline and p = 0.1, one epoch) runs through ``sgstudy run``; then
``sgstudy ui align-motifs-p`` serves its store on 127.0.0.1 and prints the study's URL, which
Chromium opens with a fresh profile (a first visit: nothing remembered from earlier clicks).
The rendered page must show the study's child runs and their mR@50 column (stored as
``mR_50``) without any click. The screenshot is kept in ``test-artifacts/``.

Run it with ``.venv/bin/python -m pytest -m slow tests/test_ui_browser.py`` after
``apt-get install chromium``; without a Chromium on the PATH it is skipped, saying so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_study import DATASET, SGSTUDY, free_port, run_to_end, sgstudy_run, start

from sgstudy.tracking_ui import trial_run_name

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
UI_TIMEOUT_S = 240
# Virtual time the headless browser lets the page run (fetches, rendering) before it reads it.
RENDER_BUDGET_MS = 30000
STUDY = "align-motifs-p"

pytestmark = pytest.mark.slow


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        f"no Chromium on the PATH (looked for {', '.join(BROWSERS)}); "
        "install it with `apt-get install chromium` to run the browser check"
    )


def headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--user-data-dir={profile}", "--window-size=1600,1000",
        f"--virtual-time-budget={RENDER_BUDGET_MS}", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def wait_for_url(ui, timeout_s: float) -> str:
    """The study URL ``sgstudy ui`` prints, once the server behind it answers."""
    deadline = time.monotonic() + timeout_s
    url = None
    while time.monotonic() < deadline:
        assert ui.proc.poll() is None, f"sgstudy ui exited ({ui.proc.returncode})\n{ui.tail()}"
        found = re.search(rf"^{STUDY}: (http://127\.0\.0\.1:\d+/\S+)$", ui.stdout(), re.M)
        url = found.group(1) if found else None
        if url is not None:
            try:
                with urllib.request.urlopen(url.split("#")[0], timeout=5) as response:
                    if response.status == 200:
                        return url
            except (urllib.error.URLError, OSError):
                pass  # not listening yet
        time.sleep(0.5)
    pytest.fail(f"no study URL answering within {timeout_s:.0f} s (last {url})\n{ui.tail()}")


def test_ui_opens_on_the_child_runs_with_their_mr50_column(tmp_path, synthetic_root_factory):
    browser = find_browser()
    data_root = synthetic_root_factory(*DATASET)
    workdir = tmp_path / "work"
    workdir.mkdir()
    args = ("--data", data_root, "--epochs", 1, "--values", "0.1")
    driver = run_to_end(sgstudy_run(STUDY, *args), cwd=workdir, logs=tmp_path / "run")
    assert driver.proc.returncode == 0, driver.tail()
    # While it ran: one line per finished trial, the last one ending the launch.
    lines = re.findall(r"^trial (\d)/2 (.+ seed 0): mR@50 [0-9.]+, mR@100 [0-9.]+ in .+; (.+)$",
                       driver.stdout(), re.M)  # fmt: skip
    assert [done for done, _, _ in lines] == ["1", "2"], driver.tail()
    assert {name for _, name, _ in lines} == {trial_run_name(v, 0) for v in ("baseline", "p=0.1")}
    assert lines[0][2].startswith("launch ETA") and lines[1][2] == "launch done"
    assert "Trial status" not in driver.stdout()  # Ray's table only with --ray-table

    port = free_port()
    ui = start(
        [
            SGSTUDY,
            "ui",
            STUDY,
            "--port",
            port,
            "--tracking-uri",
            f"sqlite:///{workdir}/mlflow.db",
        ],
        cwd=workdir,
        logs=tmp_path / "ui",
    )
    try:
        url = wait_for_url(ui, UI_TIMEOUT_S)
        assert "workflowType=machine_learning" in url and "viewStateShareKey=" in url

        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "mlflow_ui_runs.png"
        screenshot.unlink(missing_ok=True)
        shot = headless(browser, tmp_path / "profile-shot", f"--screenshot={screenshot}", url)
        assert screenshot.is_file() and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
        # A fresh profile again: the DOM of a first visit, as the screenshot was.
        dom = headless(browser, tmp_path / "profile-dom", "--dump-dom", url).stdout
    finally:
        ui.stop()

    # The trial runs are rows of the runs table, not hidden under a collapsed parent.
    for variant in ("baseline", "p=0.1"):
        assert trial_run_name(variant, 0) in dom, dom[-3000:]
    # The recall columns are shown (mR@50 is stored as mR_50: MLflow refuses "@").
    header_ids = set(re.findall(r'col-id="([^"]+)"', dom))
    assert {"metrics.`mR_50`", "metrics.`mR_100`"} <= header_ids, sorted(header_ids)
    assert re.search(r">\s*mR_50\s*<", dom), "no mR_50 column header text"
    # MLflow's model-training pages, not its GenAI ones (whose menu has "Evaluation runs").
    assert "Model registry" in dom and "Evaluation runs" not in dom

"""The MLflow UI a user opens from the printed link, driven in a real headless browser (Debian's chromium with
Playwright): the trials are listed by outcome with val_acc, and a val_acc chart has one line per trial.

The runs are written by gkd-tune's own tracking code (SweepTracker, MlflowTrialLogger) for stand-in trials: what
the UI shows depends only on the runs, and no training or Ray is needed to make them."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import new_tracking_store

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (Debian: apt-get install chromium; .ci/run does)"),
]


def write_sweep(tmp_path) -> tuple[str, str, list[str]]:
    """(tracking URI, experiment id, trial run names) of a 4-trial sweep: 3 completed, 1 stopped by ASHA."""
    from gkd_tune.sweep.space import PLAN_KEY, TrialPlan, load_space
    from gkd_tune.sweep.tracking import MlflowTrialLogger, SweepTracker

    uri = new_tracking_store(tmp_path / "mlflow.db")
    spec = load_space(ROOT / "search_spaces" / "quickstart.yaml").with_overrides(tracking_uri=uri)
    tracker = SweepTracker(spec, str(tmp_path / "runs" / "quickstart"))
    logger = MlflowTrialLogger(spec, str(tmp_path / "runs" / "quickstart"))
    names = []
    for number, (b, epochs) in enumerate([(1.5, 4), (2.5, 4), (3.5, 4), (4.5, 2)], 1):
        config = {"b": b, "inflection": 0.3, "r": 0.5, "tau": 4.0, "beta_min": 0.1, "beta_max": 0.8}
        trial = SimpleNamespace(trial_id=f"trial{number:03d}", config=config, experiment_tag=f"{number}_b={b}",
                                checkpoint=None, last_result={}, error_file=None)
        logger.on_trial_start(0, [], trial)
        for epoch in range(1, epochs + 1):  # as a trial reports: its plan first, its outcome when it completes
            trial.last_result = {"epoch": epoch, "val_acc": b * epoch / 20, "loss_total": 1.0 / epoch,
                                 "beta": 0.2 * epoch, **({PLAN_KEY: TrialPlan.resolve(spec, config).to_json()}
                                                         if epoch == 1 else {}),
                                 **({"outcome": "completed"} if epoch == spec.training.max_epochs else {})}
            logger.on_trial_result(0, [], trial, trial.last_result)
        logger.on_trial_complete(0, [], trial)
        names.append(logger.run_name(trial))
    tracker.finish("FINISHED", "trial003", 0.7)
    return uri, tracker.experiment_id, names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_printed_link_shows_the_trials_by_outcome_and_a_val_acc_chart(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    from gkd_tune.sweep.report import mlflow_ui_hint

    uri, experiment_id, names = write_sweep(tmp_path)
    from mlflow.tracking import MlflowClient

    best_run = MlflowClient(uri).search_runs([experiment_id], "tags.`gkd_tune.trial_id` = 'trial003'")[0].info.run_id
    hint = mlflow_ui_hint(uri, experiment_id, best_run)
    port = free_port()
    url, best_url = (line.split("http://")[1].replace("127.0.0.1:5000", f"http://127.0.0.1:{port}")
                     for line in hint.splitlines()[1:])
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(port), "--workers", "1"],
        cwd=tmp_path, stdout=open(tmp_path / "ui.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, (tmp_path / "ui.log").read_text()[-2000:]
                time.sleep(1)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            # the table: every trial by name, grouped by outcome, with its val_acc column
            for name in names:
                page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
            body = page.inner_text("body")
            assert "Group: completed" in body and "Group: stopped_by_asha" in body, body[:2000]
            assert "val_acc" in body and "\n0.7\n" in body  # the best trial's last val_acc, 3.5 * 4 / 20
            # the chart view of the same page: a val_acc chart with a line (legend entry) per trial
            page.goto(url + "&compareRunsMode=CHART")
            page.get_by_placeholder("Search metric charts").fill("val_acc")
            chart = page.locator("[data-testid='experiment-view-compare-runs-card']").filter(has_text="val_acc")
            chart.first.wait_for(timeout=60_000)
            lines = chart.first.locator(".scatterlayer .trace")  # plotly's traces: one or more per trial
            deadline = time.time() + 60  # the card's title and legend come first, its lines once drawn
            while lines.count() < len(names) and time.time() < deadline:
                page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "charts.png"))
            if os.environ.get("GKD_TUNE_SCREENSHOTS"):  # the README's picture: GKD_TUNE_SCREENSHOTS=docs pytest ...
                shutil.copy(tmp_path / "charts.png", Path(os.environ["GKD_TUNE_SCREENSHOTS"]) / "mlflow-trials.png")
            legend = chart.first.inner_text()
            assert lines.count() >= len(names) and sum(name in legend for name in names) >= 2, legend
            # the best trial's page, on its metric charts: its val_acc curve
            page.goto(best_url)
            page.get_by_text("val_acc").first.wait_for(timeout=60_000)
            page.locator(".scatterlayer .trace").first.wait_for(timeout=60_000)  # a curve drawn
            page.screenshot(path=str(tmp_path / "best.png"))
            body = page.inner_text("body")
            assert "loss_total" in body and "Evaluation runs" not in body  # in "Model training" mode, not GenAI
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # `mlflow ui` starts a dozen workers in its process group
        server.wait(timeout=60)

"""The web UI of ``cairn server`` in Debian's headless Chromium, driven by Selenium through /usr/bin/chromedriver.

A real ``cairn server`` (uvicorn on a free port) reads the local SQLite store that real ``cairn run``
processes filled (SDK in the trainer, agent beside it). Screenshots land in tests/output/ui/.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from selenium.webdriver.common.by import By

from cairn.store import db

from tests.support.browser import UI_DIST, WAIT_S, build_ui, cairn_env, cairn_server, chromium, screenshot, wait_for

LEARNING_RATES = ["0.3", "0.1", "0.2"]

TRAINER = """
import os, time
import cairn

cairn.init(config={"lr": 0.1}, system_metrics=False)
lr = float(cairn.config.lr)
for step in range(40):
    cairn.log({"loss": 1.0 / (1.0 + lr * step), "acc": lr * step / 40}, step=step)
if os.environ.get("UI_TEST_ARTIFACT"):
    cairn.log_artifact(os.environ["UI_TEST_ARTIFACT"], name="weights.bin")
gate = os.environ.get("UI_TEST_GATE")
deadline = time.monotonic() + 120
while gate and not os.path.exists(gate) and time.monotonic() < deadline:
    time.sleep(0.1)
cairn.finish()
"""


@pytest.fixture(scope="module")
def ui_dist():
    return build_ui()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The folder of this module's runs, the trainer script and the environment of every cairn process here."""
    root = tmp_path_factory.mktemp("ui")
    trainer = root / "train.py"
    trainer.write_text(TRAINER)
    return root, trainer, cairn_env(root / "home", CAIRN_SYSTEM_METRICS="off")


def cairn_run(workspace, experiment: str, lr: str, extra_env: dict) -> subprocess.Popen:
    """``cairn run`` of the trainer as a user starts it, not waited for."""
    _root, trainer, env = workspace
    command = [sys.executable, "-m", "cairn", "run", "-e", experiment, "--name", f"lr-{lr}", "-p", f"lr={lr}",
               "--", sys.executable, str(trainer)]
    return subprocess.Popen(command, env={**env, **extra_env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture(scope="module")
def artifact_bytes(workspace) -> bytes:
    """Three finished runs in experiment ui-train; lr-0.2 keeps an artifact of random bytes."""
    root, _trainer, _env = workspace
    payload = os.urandom(200_000)
    (root / "weights.bin").write_bytes(payload)
    home = root / "home"
    home.mkdir()
    db.upgrade(db.get_engine(f"sqlite:///{home / 'cairn.db'}"))  # once, before three processes open it
    runs = [cairn_run(workspace, "ui-train", lr, {"UI_TEST_ARTIFACT": str(root / "weights.bin")} if lr == "0.2" else {})
            for lr in LEARNING_RATES]
    for process in runs:
        _out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    return payload


@pytest.fixture(scope="module")
def server(ui_dist, workspace, artifact_bytes):
    root, _trainer, env = workspace
    with cairn_server(env, root / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    with chromium(downloads) as driver:
        yield driver


def column_values(driver, header: str) -> list[str]:
    headers = [th.text.rstrip(" ▲▼") for th in driver.find_elements(By.CSS_SELECTOR, "#runs-table thead th")]
    index = headers.index(header)
    return [row.find_elements(By.TAG_NAME, "td")[index].text
            for row in driver.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")]


def test_built_assets_fetch_nothing_remote(ui_dist):
    """An air-gapped browser reaches no CDN: the bundle names no remote URL (XML namespace names aside)."""
    assets = list((ui_dist / "assets").iterdir())
    assert {p.suffix for p in assets} == {".js", ".css"}
    index = (ui_dist / "index.html").read_text()
    assert re.findall(r'(?:src|href)="([^"]+)"', index) == [
        f"assets/{p.name}" for p in sorted(assets, key=lambda p: p.suffix != ".css")]
    xml_namespaces = {"http://www.w3.org/2000/svg", "http://www.w3.org/1998/Math/MathML",
                      "http://www.w3.org/1999/xlink", "http://www.w3.org/1999/xhtml",
                      "http://www.w3.org/XML/1998/namespace"}
    for path in [ui_dist / "index.html", *assets]:
        text = path.read_text()
        urls = set(re.findall(r"https?://[^\s\"'`)]*", text)) - xml_namespaces
        assert not urls, f"{path.name} names remote URLs: {sorted(urls)}"
        assert "//cdn" not in text, path.name


def test_the_pure_ui_modules_pass_their_node_tests():
    """Routes, columns, sort order and curve alignment (operator/cairn/server/ui/test/) under node's runner."""
    result = subprocess.run(["node", "--test", "test/"], cwd=UI_DIST.parent, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert int(re.search(r"^# pass (\d+)$", result.stdout, re.M).group(1)) > 0
    assert re.search(r"^# fail 0$", result.stdout, re.M)


def test_runs_table_lists_runs_and_sorts_by_a_clicked_header(server, browser):
    browser.get(server + "#/runs?ns=default&exp=ui-train&cols=params.lr,metrics.loss")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")) == 3,
             "the three ui-train runs are listed")
    assert sorted(column_values(browser, "name")) == sorted(f"lr-{lr}" for lr in LEARNING_RATES)
    started = column_values(browser, "started")
    assert started == sorted(started, reverse=True)  # newest first by default

    browser.find_element(By.CSS_SELECTOR, 'th[data-key="params.lr"]').click()
    ascending = sorted(LEARNING_RATES, key=float)
    wait_for(browser, lambda d: column_values(d, "params.lr") == [float_text(lr) for lr in ascending],
             "clicking params.lr sorts ascending")
    assert "sort=params.lr+asc" in browser.current_url
    browser.find_element(By.CSS_SELECTOR, 'th[data-key="params.lr"]').click()
    wait_for(browser, lambda d: column_values(d, "params.lr") == [float_text(lr) for lr in reversed(ascending)],
             "clicking params.lr again sorts descending")
    screenshot(browser, "runs-table")


def float_text(lr: str) -> str:
    return str(float(lr))


def test_compare_page_overlays_the_curves_of_two_runs(server, browser):
    browser.get(server + "#/runs?ns=default&exp=ui-train")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")) == 3, "runs listed")
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")[:2]
    chosen = sorted(row.find_elements(By.TAG_NAME, "td")[1].text for row in rows)
    for row in rows:
        row.find_element(By.CSS_SELECTOR, "input[type=checkbox]").click()
    browser.find_element(By.ID, "compare-selected").click()

    def drawn_charts(d):
        charts = d.find_elements(By.CSS_SELECTOR, ".chart[data-drawn-ms]")
        return charts if len(charts) == 2 else None

    charts = wait_for(browser, drawn_charts, "the compare page draws one chart per common metric (acc, loss)")
    for chart in charts:
        assert chart.get_attribute("data-series") == "2"
        assert chart.get_attribute("data-points") == "40"  # both runs log steps 0..39: one shared x axis
        assert len(chart.find_elements(By.TAG_NAME, "canvas")) == 1
        legend = [e.text for e in chart.find_elements(By.CSS_SELECTOR, ".u-legend .u-series .u-label")]
        assert sorted(legend[1:]) == chosen
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#compare-runs thead th")]
    assert headers == ["", "run", "status", "lr"]
    lrs = sorted(row.find_elements(By.TAG_NAME, "td")[3].text
                 for row in browser.find_elements(By.CSS_SELECTOR, "#compare-runs tbody tr"))
    assert lrs == sorted(name.removeprefix("lr-") for name in chosen)
    screenshot(browser, "compare")


def test_run_page_downloads_an_artifact_with_its_original_bytes(server, browser, downloads, artifact_bytes):
    browser.get(server + "#/runs?ns=default&exp=ui-train")
    wait_for(browser, lambda d: d.find_elements(By.LINK_TEXT, "lr-0.2"), "the run with the artifact is listed")
    browser.find_element(By.LINK_TEXT, "lr-0.2").click()
    link = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#artifacts a.artifact"), "artifacts listed")[0]
    assert link.text.endswith("weights.bin")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".chart[data-drawn-ms]")) == 2,
             "the run's two curves are drawn")
    provenance = browser.find_element(By.ID, "provenance").text
    assert "environment" in provenance and "python" in provenance.lower()
    screenshot(browser, "run")
    link.click()
    target = downloads / "weights.bin"
    wait_for(browser, lambda d: target.exists() and target.stat().st_size == len(artifact_bytes),
             "the download completes")
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(artifact_bytes).hexdigest()


def api_runs(server: str, experiment: str) -> list[dict]:
    with urllib.request.urlopen(f"{server}api/v1/namespaces/default/runs?experiment={experiment}", timeout=5) as r:
        return json.load(r)["runs"]


def test_running_run_turns_finished_without_a_reload(server, browser, workspace):
    root, _trainer, _env = workspace
    gate = root / "live.gate"
    process = cairn_run(workspace, "ui-live", "0.5", {"UI_TEST_GATE": str(gate)})
    try:
        deadline = time.monotonic() + WAIT_S
        while not api_runs(server, "ui-live"):
            assert time.monotonic() < deadline, "cairn run did not create its run"
            time.sleep(0.2)
        browser.get(server + "#/runs?ns=default&exp=ui-live")
        wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#runs-table tbody .status").text == "RUNNING",
                 "the run shows as RUNNING")
        browser.execute_script("window.__sameDocument = true")
        screenshot(browser, "live-running")
        gate.touch()
        assert process.wait(timeout=60) == 0, process.stderr.read()
        wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#runs-table tbody .status").text == "FINISHED",
                 "the status turns FINISHED by polling")
        assert browser.execute_script("return window.__sameDocument") is True
        screenshot(browser, "live-finished")
    finally:
        gate.touch()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

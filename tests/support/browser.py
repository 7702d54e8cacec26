"""The web UI's test harness: the built UI, a ``cairn server`` process and Debian's headless chromium.

Chromium is driven by Selenium through Debian's /usr/bin/chromedriver, named explicitly, with
SE_OFFLINE=true: Selenium Manager downloads nothing. Screenshots land in tests/output/ui/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .servers import free_port

REPO = Path(__file__).resolve().parents[2]
UI_DIST = REPO / "operator" / "cairn" / "server" / "ui" / "dist"
SCREENSHOTS = REPO / "tests" / "output" / "ui"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 60  # generous: seven engineers share two cores


def build_ui() -> Path:
    """hack/build-ui.sh: a copy from the cache when neither the lockfile nor the sources changed."""
    subprocess.run(["bash", str(REPO / "hack" / "build-ui.sh")], check=True, stdout=subprocess.DEVNULL)
    return UI_DIST


def cairn_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a cairn process on this checkout, with no CAIRN_* variable of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
    env.update(CAIRN_HOME=str(home), PYTHONPATH=str(REPO / "operator"), **extra)
    return env


@contextmanager
def cairn_server(env: dict[str, str], log: Path, *args: str) -> Iterator[str]:
    """``cairn server ARGS`` on a free loopback port; yields its base URL once /api/v1/healthz answers."""
    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "cairn", "server", "--host", "127.0.0.1", "--port", str(port),
                                    *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + WAIT_S
            while True:
                try:
                    with urllib.request.urlopen(url + "api/v1/healthz", timeout=2):
                        break
                except OSError:
                    assert process.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, f"cairn server did not answer healthz:\n{log.read_text()}"
                    time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@contextmanager
def chromium(downloads: Path) -> Iterator[Any]:
    """Headless chromium whose downloads land in ``downloads``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    previous = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    finally:
        if previous is None:
            del os.environ["SE_OFFLINE"]
        else:
            os.environ["SE_OFFLINE"] = previous
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Callable[[Any], Any], message: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition, message=message)


def screenshot(driver: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path

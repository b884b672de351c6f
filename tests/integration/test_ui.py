"""``hpo ui`` serves the MLflow UI over the local store: the study's runs and plots are reachable.

The MLflow web UI is a JavaScript app over MLflow's REST API; these are the calls it makes to show
an experiment, a run and an artifact.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SPEC = """\
name: ui-study
data: {source: sklearn, name: iris}
train: {epochs: 2}
search:
  lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
sampler: {name: random, seed: 0}
pruner: {name: none}
trials: 2
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


@dataclass
class UI:
    """A 2-trial study's store served by ``hpo ui``."""

    base: str
    experiment_id: str
    parent: dict
    children: list[dict]


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UI]:
    tmp_path = tmp_path_factory.mktemp("ui")
    (tmp_path / "s.yaml").write_text(SPEC)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HPO_STORAGE")}
    hpo = [sys.executable, "-m", "hpo"]
    subprocess.run(
        [*hpo, "study", "start", "s.yaml", "-q"], cwd=tmp_path, env=env, check=True, timeout=300
    )

    port = free_port()
    server = subprocess.Popen(
        [*hpo, "ui", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if get(f"{base}/health").strip() == b"OK":
                    break
            except OSError:
                pass
            assert server.poll() is None, "hpo ui exited"
            assert time.monotonic() < deadline, "hpo ui did not answer in 90 s"
            time.sleep(0.5)
        query = urllib.parse.urlencode({"experiment_name": "ui-study"})
        exp = json.loads(get(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}"))
        exp_id = exp["experiment"]["experiment_id"]
        runs = post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
        parents = [
            r
            for r in runs
            if not any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))
        ]
        children = [r for r in runs if r not in parents]
        assert len(parents) == 1
        yield UI(base, exp_id, parents[0], children)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
def test_hpo_ui_serves_the_study_runs_and_plots(ui: UI) -> None:
    base = ui.base
    assert b"<html" in get(f"{base}/").lower()  # the UI itself
    assert len(ui.children) == 2
    child = ui.children[0]["info"]["run_id"]
    query = urllib.parse.urlencode({"run_id": child})
    files = {
        f["path"] for f in json.loads(get(f"{base}/api/2.0/mlflow/artifacts/list?{query}"))["files"]
    }
    assert {"confusion_matrix.svg", "roc_curves.svg", "learning_curves.svg"} <= files
    query = urllib.parse.urlencode({"path": "roc_curves.svg", "run_uuid": child})
    with urllib.request.urlopen(f"{base}/get-artifact?{query}", timeout=10) as response:
        # The type the UI's image view needs to show it; an attachment, so never run as a page.
        assert response.headers["Content-Type"].startswith("image/svg+xml")
        assert "attachment" in response.headers["Content-Disposition"]
        assert _svg_width(response.read()) > 300


# -- a real browser ----------------------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Headless, as root in a container, and without the browser's own calls home (updates, sync,
#: metrics): the machine has no internet, and a test must not wait on it.
BROWSER_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
)
#: Where the browser test leaves its screenshots (CI keeps this folder as the test's artifact).
SCREENSHOTS = Path(os.environ.get("HPO_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed and `make browser` could "
            "not install them (it needs root or sudo and the Debian registry)"
        )
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _svg_width(data: bytes) -> int:
    root = ET.fromstring(data)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return round(float(root.get("width", "0")))


@pytest.mark.slow
def test_a_browser_opens_a_trial_and_its_plots_load(ui: UI, browser: Any) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def wait() -> Any:
        # The UI re-renders its tables while loading: an element found a moment ago may be
        # replaced (stale) by the time it is read or clicked; look again instead of failing.
        return WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))

    def click_text(text: str) -> None:
        def click(driver: Any) -> bool:
            found = driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{text}']")
            shown = next((e for e in found if e.is_displayed()), None)
            if shown is None:
                return False
            shown.click()
            return True

        wait().until(click, f"'{text}' never showed")

    # The experiment page lists the study's parent run; unfold it and open the first trial.
    child = next(r for r in ui.children if r["info"]["run_name"] == "trial-0000")
    run_id = child["info"]["run_id"]
    browser.get(f"{ui.base}/#/experiments/{ui.experiment_id}?workflowType=machine_learning")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:

        def unfold_parent(driver: Any) -> bool:
            rows = driver.find_elements(By.CSS_SELECTOR, "[role='row']")
            row = next((r for r in rows if "ui-study" in r.text.split("\n")), None)
            if row is None:
                return False
            row.find_element(By.CSS_SELECTOR, "button").click()  # unfold its child runs
            return True

        wait().until(unfold_parent, "the study's parent run is not listed")
        click_text("trial-0000")
        wait().until(lambda d: run_id in d.current_url, "the run did not open")
        click_text("Artifacts")
        for plot in ("confusion_matrix.svg", "roc_curves.svg"):
            click_text(plot)
            query = urllib.parse.urlencode({"path": plot, "run_uuid": run_id})
            width = _svg_width(get(f"{ui.base}/get-artifact?{query}"))

            def loaded(driver: Any, width: int = width) -> bool:
                # The preview is an <img> of the fetched SVG: drawn, at the SVG's own width (a
                # blob without the SVG type would not draw: naturalWidth 0).
                return bool(
                    driver.execute_script(
                        "return [...document.images].some("
                        "i => i.src.startsWith('blob:') && i.complete && i.naturalWidth === arguments[0])",
                        width,
                    )
                )

            wait().until(loaded, f"{plot} did not load in the page")
            browser.save_screenshot(str(SCREENSHOTS / f"mlflow-ui-{Path(plot).stem}.png"))
    except Exception:
        browser.save_screenshot(str(SCREENSHOTS / "mlflow-ui-failure.png"))
        raise

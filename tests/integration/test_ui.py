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
from pathlib import Path

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


@pytest.mark.slow
def test_hpo_ui_serves_the_study_runs_and_plots(tmp_path: Path) -> None:
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

        assert b"<html" in get(f"{base}/").lower()  # the UI itself
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
        assert len(parents) == 1 and len(children) == 2
        child = children[0]["info"]["run_id"]
        query = urllib.parse.urlencode({"run_id": child})
        files = {
            f["path"]
            for f in json.loads(get(f"{base}/api/2.0/mlflow/artifacts/list?{query}"))["files"]
        }
        assert {"confusion_matrix.png", "roc_curves.png", "learning_curves.png"} <= files
        query = urllib.parse.urlencode({"path": "roc_curves.png", "run_uuid": child})
        assert get(f"{base}/get-artifact?{query}")[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

"""The best model is registered as the study's champion and ``hpo serve`` answers raw rows."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from hpo.cli import main

SPEC = """\
name: serve-tabular
data: {source: csv, path: people.csv, target: label, val_fraction: 0.25, seed: 0}
train: {epochs: 6, seed: 0}
search:
  lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
  width: {type: categorical, choices: [16, 64]}
sampler: {name: random, seed: 2}
pruner: {name: none}
trials: 4
"""


def people(n: int = 240) -> pd.DataFrame:
    """A rule a small MLP learns (income and city decide), with gaps and text categories."""
    rng = np.random.default_rng(0)
    income = rng.normal(50, 15, n).round(1)
    city = rng.choice(["paris", "rome", "oslo"], n).astype(object)
    label = np.where(income + np.where(city == "oslo", 15, 0) > 55, "yes", "no")
    income[rng.choice(n, n // 10, replace=False)] = np.nan
    city[rng.choice(n, n // 10, replace=False)] = None
    return pd.DataFrame(
        {"age": rng.integers(18, 80, n), "income": income, "city": city, "label": label}
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def hpo_serve(name: str, cwd: Path, tracking_uri: str) -> Iterator[str]:
    """``hpo serve NAME`` on a free port (a real process); yields its base URL once ``/health``
    answers, and stops it with Ctrl-C afterwards."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hpo", "serve", name, "--port", str(port)],
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read() if server.stdout else ""
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.3)
        yield base
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=20)


def post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def tabular_study(workdir: Path) -> Path:
    people().to_csv(workdir / "people.csv", index=False)
    (workdir / "s.yaml").write_text(SPEC)
    out = CliRunner().invoke(main, ["study", "start", "s.yaml", "--quiet"])
    assert out.exit_code == 0, out.output
    assert "models:/serve-tabular@champion" in out.output
    return workdir


def test_the_best_trial_is_the_champion_with_its_lineage(tabular_study: Path) -> None:
    import optuna
    from mlflow import MlflowClient

    uri = f"sqlite:///{tabular_study / 'mlflow.db'}"
    study = optuna.load_study(
        study_name="serve-tabular", storage=f"sqlite:///{tabular_study / 'hpo.db'}"
    )
    client = MlflowClient(uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("serve-tabular", "champion")
    best = study.best_trial
    assert champion.tags["hpo.trial"] == str(best.number)
    assert float(champion.tags["hpo.value"]) == best.value
    assert champion.tags["hpo.metric"] == "val_accuracy"
    assert champion.tags["hpo.spec_hash"] == study.user_attrs["hpo.spec_hash"]
    assert champion.tags["hpo.seed"] == "0"
    assert champion.run_id == best.user_attrs["mlflow_run_id"]
    assert champion.source == best.user_attrs["model_uri"]
    # One version per new best, in trial order: each beats the one before.
    versions = sorted(
        client.search_model_versions("name='serve-tabular'"), key=lambda v: int(v.version)
    )
    values = [float(v.tags["hpo.value"]) for v in versions]
    assert values == sorted(values) and len(set(values)) == len(values)
    running_best = [t.value for t in study.trials if t.value is not None]
    improvements = sum(
        1 for i, v in enumerate(running_best) if v > max(running_best[:i], default=-1)
    )
    assert len(versions) == improvements


def test_serve_answers_raw_rows_like_the_trained_pipeline(tabular_study: Path) -> None:
    import torch

    from hpo.data import load_dataset
    from hpo.data.base import SplitOptions
    from hpo.tracking.models import load_pytorch_model

    uri = f"sqlite:///{tabular_study / 'mlflow.db'}"
    with hpo_serve("serve-tabular", tabular_study, uri) as base:
        with urllib.request.urlopen(f"{base}/metadata", timeout=5) as r:
            meta = json.loads(r.read())
        assert meta["input"]["columns"] == ["age", "income", "city"]
        assert meta["classes"] == ["no", "yes"]

        raw = people().drop(columns="label")
        raw.loc[0, "city"] = "lima"  # never seen: encoded as no city, not an error
        records = json.loads(raw.to_json(orient="records"))
        code, answer = post(f"{base}/invocations", {"dataframe_records": records})
        assert code == 200, answer
        split = json.loads(raw.to_json(orient="split", index=False))
        code, same = post(f"{base}/invocations", {"dataframe_split": split})
        assert code == 200 and same["predictions"] == answer["predictions"]

        # What the trained pipeline says: the source's fitted sklearn preprocessing + the model.
        data = load_dataset(
            "csv", {"path": "people.csv", "target": "label"},
            SplitOptions(val_fraction=0.25, seed=0), base_dir=tabular_study,
        )  # fmt: skip
        model = load_pytorch_model("models:/serve-tabular@champion", tracking_uri=uri)
        with torch.no_grad():
            logits = model(torch.from_numpy(data.preprocessor.transform(raw).astype(np.float32)))
        expected = [data.classes[i] for i in logits.argmax(dim=1).tolist()]
        assert answer["predictions"] == expected
        truth = people()["label"].tolist()
        accuracy = np.mean([p == t for p, t in zip(answer["predictions"], truth, strict=True)])
        assert accuracy > 0.8  # the rule is learnable: the served model is a trained one

        code, error = post(
            f"{base}/invocations", {"dataframe_records": [{"age": 30, "city": "rome"}]}
        )
        assert code == 400 and "'income'" in error["error"]
        code, error = post(f"{base}/invocations", {"rows": []})
        assert code == 400 and "dataframe_split" in error["error"]


def test_serve_without_a_champion_is_one_clear_line(workdir: Path) -> None:
    out = CliRunner().invoke(
        main, ["serve", "nope", "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}"]
    )
    assert out.exit_code == 2
    assert "registered model 'nope' has no alias 'champion'" in out.output
    assert "Traceback" not in out.output


def test_registering_touches_only_the_given_store(workdir: Path) -> None:
    # MLflow's registry looks runs up through its global tracking URI; that must not create
    # (or write to) ./mlflow.db when the study names another store.
    (workdir / "s.yaml").write_text(
        "name: elsewhere\ndata: {source: sklearn, name: iris}\ntrain: {epochs: 1}\n"
        "search:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\ntrials: 1\n"
    )
    store = workdir / "team" / "ml.db"
    store.parent.mkdir()
    out = CliRunner().invoke(
        main,
        ["study", "start", "s.yaml", "-q", "--tracking-uri", f"sqlite:///{store}",
         "--storage", f"sqlite:///{workdir / 'team' / 'hpo.db'}"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "models:/elsewhere@champion" in out.output
    assert not (workdir / "mlflow.db").exists()


def test_a_champion_that_cannot_be_registered_is_said_at_the_end(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    import hpo.tracking.champion
    from hpo.errors import TrackingError

    def registry_down(*args: object, **kwargs: object) -> None:
        raise TrackingError("registering the champion of 'reg': the registry is down")

    real = hpo.tracking.champion.promote
    monkeypatch.setattr(hpo.tracking.champion, "promote", registry_down)
    (workdir / "s.yaml").write_text(
        "name: reg\ndata: {source: sklearn, name: iris}\ntrain: {epochs: 1}\n"
        "search:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\n"
        "sampler: {name: random, seed: 0}\npruner: {name: none}\ntrials: 2\n"
    )
    out = CliRunner().invoke(main, ["study", "start", "s.yaml", "-q"])
    assert out.exit_code == 0, out.output  # the trials are safe; the study ends normally
    assert (
        "the best model could not be registered as the champion: registering the champion of "
        "'reg': the registry is down" in " ".join(out.output.split())
    )
    assert "@champion" not in out.output
    # the registry answers again: the next run registers the champion and says nothing of the
    # earlier failure
    monkeypatch.setattr(hpo.tracking.champion, "promote", real)
    out = CliRunner().invoke(main, ["study", "start", "s.yaml", "-q", "--n-trials", "1"])
    assert out.exit_code == 0, out.output
    assert "models:/reg@champion" in out.output
    assert "could not be registered" not in out.output
    study = optuna.load_study(study_name="reg", storage=f"sqlite:///{workdir}/hpo.db")
    assert not study.user_attrs.get("hpo.champion_error")

"""Multi-objective studies end to end: the Pareto front on the parent run, in its report, in
``hpo study best``; and inference latency as an objective."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from hpo.cli import main
from hpo.report import _fmt
from hpo.spec import parse_spec
from hpo.study import run_study

SPEC = """\
name: mo
data: {source: sklearn, name: iris}
metrics: [val_accuracy, n_params]
directions: [maximize, minimize]
train: {epochs: 2, seed: 0}
search:
  lr:    {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
  width: {type: int, low: 4, high: 64, log: true}
  depth: {type: int, low: 1, high: 2}
sampler: {name: random, seed: 0}
trials: 4
"""


def test_multi_objective_study_end_to_end(workdir: Path) -> None:
    (workdir / "mo.yaml").write_text(SPEC)
    runner = CliRunner()
    out = runner.invoke(main, ["study", "start", "mo.yaml", "-q"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    study = optuna.load_study(study_name="mo", storage=f"sqlite:///{workdir}/hpo.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    front = sorted(study.best_trials, key=lambda t: t.number)
    numbers = [t.number for t in front]
    assert front

    # the end of `study start` shows the front with the objectives' names
    text = " ".join(out.output.split())
    assert f"Pareto front of 'mo' (val_accuracy, n_params): {len(front)} trials" in text
    for t in front:
        acc, size = t.values
        assert (
            f"Pareto-optimal trial {t.number}: val_accuracy {_fmt(acc)}, n_params {_fmt(size)}"
            in text
        )

    # the parent run: its summary and the report with the Pareto front
    # absolute: MLflow caches stores by URI, and a relative one names another file in each test
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.metrics["pareto_front_size"] == len(front)
    assert parent.data.tags["hpo.pareto_trials"] == ",".join(map(str, numbers))
    assert parent.data.tags["hpo.pareto_run_ids"] == ",".join(
        t.user_attrs["mlflow_run_id"] for t in front
    )
    history = client.get_metric_history(parent.info.run_id, "n_complete")
    assert sorted((m.step, m.value) for m in history) == [(i, i + 1.0) for i in range(4)]
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "study_report/plots")}
    assert "study_report/plots/pareto_front.png" in plots, plots
    local = client.download_artifacts(
        parent.info.run_id, "study_report/plots/pareto_front.png", str(workdir)
    )
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = Path(
        client.download_artifacts(parent.info.run_id, "study_report/report.html", str(workdir))
    ).read_text()
    section = page.split('<h2 id="pareto-front">', 1)[1].split("<h2", 1)[0]
    assert section.startswith(f"Pareto front: {len(front)} trials")
    for t in front:
        assert t.user_attrs["mlflow_run_id"] in section
    assert 'id="pareto_front"' in page  # Optuna's Pareto-front figure

    # `hpo study best --json`: the front, each trial's objectives by name
    out = runner.invoke(main, ["study", "best", "mo", "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    payload = json.loads(out.output)
    assert payload["metrics"] == ["val_accuracy", "n_params"]
    assert payload["directions"] == ["maximize", "minimize"]
    assert [p["number"] for p in sorted(payload["pareto_front"], key=lambda p: p["number"])] == (
        numbers
    )
    for p in payload["pareto_front"]:
        trial = study.trials[p["number"]]
        assert p["objectives"] == {"val_accuracy": trial.values[0], "n_params": trial.values[1]}
        assert p["mlflow_run_id"] == trial.user_attrs["mlflow_run_id"]


def test_inference_latency_is_an_objective(workdir: Path) -> None:
    spec = parse_spec(
        "name: fast\ndata: {source: sklearn, name: iris}\n"
        "metrics: [val_accuracy, inference_ms]\ntrain: {epochs: 1, seed: 0}\n"
        "search:\n  width: {type: int, low: 4, high: 256, log: true}\n"
        "sampler: {name: random, seed: 0}\ntrials: 3\n"
    )
    assert spec.objective_directions == ["maximize", "minimize"]  # latency's natural direction
    tracking = f"sqlite:///{workdir}/mlflow.db"
    result = run_study(
        spec, source="fast.yaml", storage_url=f"sqlite:///{workdir}/hpo.db", tracking_uri=tracking
    )
    trials = result.study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert [d.name for d in result.study.directions] == ["MAXIMIZE", "MINIMIZE"]
    client = MlflowClient(tracking)
    for t in trials:
        accuracy, latency = t.values
        assert 0.0 <= accuracy <= 1.0
        # milliseconds per sample of a tiny MLP on 38 rows: positive, and far below a second
        assert math.isfinite(latency) and 0.0 < latency < 1000.0
        metrics = client.get_run(t.user_attrs["mlflow_run_id"]).data.metrics
        assert metrics["inference_ms"] == pytest.approx(latency)
    assert result.study.best_trials

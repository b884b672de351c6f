"""End to end on the embedded defaults: a real study on SQLite, logged to a local MLflow store.

One 3-trial study is run through the CLI (module fixture); the tests then look at it the way a
user does, through ``MlflowClient`` and the Optuna storage.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from hpo.cli import main

SPEC = """\
name: it-digits
data: {source: sklearn, name: digits, val_fraction: 0.25, test_fraction: 0.2, seed: 0}
model: {family: mlp}
train: {epochs: 4, seed: 0}
search:
  lr:         {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  width:      {type: int, low: 16, high: 64}
  optimizer:  {type: categorical, choices: [adam, sgd]}
  momentum:   {type: float, low: 0.0, high: 0.9, when: {optimizer: sgd}}
fixed: {batch_size: 64, dropout: 0.1}
sampler: {name: random, seed: 3}
pruner: {name: none}
trials: 3
"""
EPOCHS = 4


@dataclass
class Ran:
    dir: Path
    spec: Path
    storage: str
    tracking: str
    output: str


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    root = tmp_path_factory.mktemp("study")
    spec = root / "study.yaml"
    spec.write_text(SPEC)
    storage = f"sqlite:///{root}/hpo.db"
    tracking = f"sqlite:///{root}/mlflow.db"
    cwd = os.getcwd()
    os.chdir(root)  # artifacts go next to the store, never into the repository
    try:
        code, out = invoke(
            "study", "start", str(spec), "--storage", storage, "--tracking-uri", tracking, "-q"
        )
    finally:
        os.chdir(cwd)
    assert code == 0, out
    return Ran(root, spec, storage, tracking, out)


def client(ran: Ran) -> MlflowClient:
    return MlflowClient(ran.tracking)


def runs(ran: Ran) -> tuple[object, list]:
    c = client(ran)
    exp = c.get_experiment_by_name("it-digits")
    assert exp is not None
    all_runs = c.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in all_runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    return parents[0], sorted(children, key=lambda r: int(r.data.tags["hpo.trial"]))


def test_study_has_three_complete_trials_with_run_ids(ran: Ran) -> None:
    study = optuna.load_study(study_name="it-digits", storage=ran.storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert all(t.user_attrs["mlflow_run_id"] for t in study.trials)
    assert "best trial" in ran.output


def test_one_parent_and_a_child_per_trial(ran: Ran) -> None:
    parent, children = runs(ran)
    assert parent.info.run_name == "it-digits"
    assert parent.info.status == "FINISHED"
    assert [c.info.run_name for c in children] == ["trial-0000", "trial-0001", "trial-0002"]
    study = optuna.load_study(study_name="it-digits", storage=ran.storage)
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    for child, trial in zip(children, study.trials, strict=True):
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.tags["hpo.state"] == "COMPLETE"
        assert child.info.run_id == trial.user_attrs["mlflow_run_id"]
    # the parent's summary is current
    assert parent.data.metrics["n_complete"] == 3
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(study.best_value)
    # ... and was kept current trial by trial: one point per trial, at the trial's number
    history = client(ran).get_metric_history(parent.info.run_id, "n_complete")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 2.0), (2, 3.0)]
    best_run = children[study.best_trial.number].info.run_id
    assert parent.data.tags["hpo.best_run_id"] == best_run
    assert parent.data.tags["hpo.best_trial"] == str(study.best_trial.number)


def test_child_runs_hold_sampled_and_fixed_params(ran: Ran) -> None:
    _, children = runs(ran)
    study = optuna.load_study(study_name="it-digits", storage=ran.storage)
    for child, trial in zip(children, study.trials, strict=True):
        params = child.data.params
        for name, value in trial.params.items():
            assert params[name] == str(value)
        assert params["batch_size"] == "64"
        assert params["dropout"] == "0.1"
        assert params["epochs"] == str(EPOCHS)
        assert ("momentum" in trial.params) == (trial.params["optimizer"] == "sgd")


def test_per_epoch_curves_and_final_metrics(ran: Ran) -> None:
    _, children = runs(ran)
    c = client(ran)
    for child in children:
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            history = c.get_metric_history(child.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), key
        metrics = child.data.metrics
        for key in (
            "val_accuracy",
            "val_precision",
            "val_recall",
            "val_f1",
            "val_roc_auc",
            "val_loss",
            "n_params",
        ):
            assert key in metrics, key
        assert 0.0 <= metrics["val_accuracy"] <= 1.0
    best = max(children, key=lambda r: r.data.metrics["val_accuracy"])
    assert (
        best.data.metrics["val_accuracy"] > 0.8
    )  # digits is easy; a broken loop would not get here


def test_plots_and_model_are_logged_and_the_model_predicts(ran: Ran) -> None:
    import mlflow
    import mlflow.pytorch
    import torch

    from hpo.data import load_dataset
    from hpo.data.base import SplitOptions

    _, children = runs(ran)
    c = client(ran)
    child = children[0]
    names = {a.path for a in c.list_artifacts(child.info.run_id)}
    assert {"confusion_matrix.svg", "roc_curves.svg", "learning_curves.svg"} <= names, names
    local = Path(c.download_artifacts(child.info.run_id, "confusion_matrix.svg", str(ran.dir)))
    matrix = ET.fromstring(local.read_text(encoding="utf-8"))
    counts = [int(e.text or "") for e in matrix.iter() if e.get("class") == "count"]
    assert len(counts) == 100 and sum(counts) > 0  # digits: 10 x 10 cells, every sample counted

    study = optuna.load_study(study_name="it-digits", storage=ran.storage)
    trial = study.trials[0]
    # Load it the way a user would, through MLflow's own API; restore the global URI afterwards
    # so later tests do not inherit this store.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(ran.tracking)
    try:
        model = mlflow.pytorch.load_model(trial.user_attrs["model_uri"])
    finally:
        mlflow.set_tracking_uri(previous)
    data = load_dataset(
        "sklearn", {"name": "digits"}, SplitOptions(val_fraction=0.25, test_fraction=0.2)
    )
    with torch.no_grad():
        logits = model(torch.from_numpy(data.X_val))
    accuracy = float((logits.argmax(1).numpy() == data.y_val).mean())
    # the logged model is the trained one: it scores what the run says it scored
    assert accuracy == pytest.approx(trial.user_attrs["val_accuracy"], abs=1e-6)


def test_test_split_is_evaluated_once_for_the_best_trial(ran: Ran) -> None:
    parent, _ = runs(ran)
    assert "test_accuracy" in parent.data.metrics
    study = optuna.load_study(study_name="it-digits", storage=ran.storage)
    assert study.user_attrs["hpo.test_trial"] == study.best_trial.number
    assert "held-out test split" in ran.output


def test_second_start_resumes_and_adds_trials(ran: Ran) -> None:
    cwd = os.getcwd()
    os.chdir(ran.dir)
    try:
        code, out = invoke(
            "study",
            "start",
            str(ran.spec),
            "--storage",
            ran.storage,
            "--tracking-uri",
            ran.tracking,
            "-q",
        )
        assert code == 0, out
        assert "already has 3 of its 3 trials" in out
        code, out = invoke(
            "study",
            "start",
            str(ran.spec),
            "--storage",
            ran.storage,
            "--tracking-uri",
            ran.tracking,
            "-q",
            "--n-trials",
            "1",
        )
        assert code == 0, out
    finally:
        os.chdir(cwd)
    study = optuna.load_study(study_name="it-digits", storage=ran.storage)
    assert len(study.trials) == 4
    parent, children = runs(ran)
    assert len(children) == 4  # the new trial nests under the same parent
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id


def test_drifted_spec_is_refused_unless_forced(ran: Ran) -> None:
    drifted = ran.dir / "drifted.yaml"
    drifted.write_text(SPEC.replace("high: 1.0e-2", "high: 5.0e-2"))
    before = len(optuna.load_study(study_name="it-digits", storage=ran.storage).trials)
    result = CliRunner().invoke(
        main,
        [
            "study",
            "start",
            str(drifted),
            "--storage",
            ran.storage,
            "--tracking-uri",
            ran.tracking,
            "-q",
        ],
    )
    assert result.exit_code == 2
    assert "different spec" in result.output
    assert "search.lr.high: 0.01 -> 0.05" in result.output
    assert "Traceback" not in result.output
    assert len(optuna.load_study(study_name="it-digits", storage=ran.storage).trials) == before


def test_show_best_export_list(ran: Ran, tmp_path: Path) -> None:
    code, out = invoke("study", "list", "--storage", ran.storage)
    assert code == 0 and "it-digits" in out
    code, out = invoke("study", "show", "it-digits", "--storage", ran.storage)
    assert code == 0 and "complete" in out
    code, out = invoke("study", "best", "it-digits", "--storage", ran.storage, "--json")
    assert code == 0
    import json

    best = json.loads(out)["best_trial"]
    study = optuna.load_study(study_name="it-digits", storage=ran.storage)
    assert best["number"] == study.best_trial.number
    assert best["value"] == pytest.approx(study.best_value)
    csv = tmp_path / "trials.csv"
    code, out = invoke("study", "export", "it-digits", "--storage", ran.storage, "-o", str(csv))
    assert code == 0
    import pandas as pd

    frame = pd.read_csv(csv)
    assert len(frame) == len(study.trials)
    assert {"number", "state", "value", "param_lr", "mlflow_run_id"} <= set(frame.columns)
    assert np.isfinite(frame["value"].dropna()).all()


def test_parent_run_holds_the_report_and_the_chance_verdict(ran: Ran) -> None:
    parent, _ = runs(ran)
    # digits is far above chance
    assert parent.data.tags["hpo.chance_level"] == "above_chance"
    assert "above chance" in ran.output
    c = client(ran)
    listed = {a.path for a in c.list_artifacts(parent.info.run_id, "study_report")}
    assert "study_report/report.html" in listed
    html = Path(
        c.download_artifacts(parent.info.run_id, "study_report/report.html", str(ran.dir))
    ).read_text()
    assert "data:image/png;base64" in html  # the best trial's plots are embedded
    assert '<script src="http' not in html  # self-contained: opens offline


def test_report_command_writes_the_files(ran: Ran, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    code, output = invoke(
        "study",
        "report",
        "it-digits",
        "--storage",
        ran.storage,
        "--tracking-uri",
        ran.tracking,
        "-o",
        str(out),
        "--no-log",
    )
    assert code == 0, output
    assert (out / "report.html").stat().st_size > 10_000
    assert any(p.suffix == ".png" for p in (out / "plots").iterdir())


def test_report_command_keeps_the_chance_verdict(ran: Ran, tmp_path: Path) -> None:
    # Re-running the report replaces the parent's report.html: it must say what the study's end
    # said about chance, not drop it.
    out = tmp_path / "again"
    code, output = invoke(
        "study",
        "report",
        "it-digits",
        "--storage",
        ran.storage,
        "--tracking-uri",
        ran.tracking,
        "-o",
        str(out),
    )
    assert code == 0, output
    assert "is above chance" in output
    assert "is above chance" in (out / "report.html").read_text()
    parent, _ = runs(ran)
    logged = Path(
        client(ran).download_artifacts(
            parent.info.run_id, "study_report/report.html", str(tmp_path)
        )
    ).read_text()
    assert "is above chance" in logged
    assert parent.data.tags["hpo.chance_level"] == "above_chance"


def test_ctrl_c_while_a_run_is_sent_keeps_the_trial_and_its_run(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after a trial's result is complete (its run was being sent): the result is
    recorded, the worker stops, and the run waits in the spool for the next start."""
    from hpo.tracking.finisher import Finisher

    (workdir / "s.yaml").write_text(
        "name: cut\ndata: {source: sklearn, name: iris}\ntrain: {epochs: 1}\n"
        "search:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\ntrials: 2\n"
    )
    real_submit = Finisher.submit
    calls: list[int] = []

    def interrupted(self: Finisher, path: Path) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real_submit(self, path)

    monkeypatch.setattr(Finisher, "submit", interrupted)
    code, out = invoke("study", "start", "s.yaml", "-q")
    assert code == 130, out
    study = optuna.load_study(study_name="cut", storage=f"sqlite:///{workdir}/hpo.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    assert len(list((workdir / ".hpo-spool" / "cut").iterdir())) == 1

    monkeypatch.setattr(Finisher, "submit", real_submit)
    code, out = invoke("study", "start", "s.yaml", "-q")  # resumes, and sends the waiting run
    assert code == 0, out
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("cut")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`hpo.trial` = '0'")
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert {"confusion_matrix.svg", "roc_curves.svg"} <= {
        a.path for a in client.list_artifacts(runs[0].info.run_id)
    }
    assert not (workdir / ".hpo-spool" / "cut").exists()

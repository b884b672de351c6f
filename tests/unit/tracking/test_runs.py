"""The study as a user sees it in MLflow, asserted through ``MlflowClient``."""

from __future__ import annotations

import socket
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient
from torch import nn

from hpo.errors import TrackingError
from hpo.tracking import runs
from hpo.tracking.models import load_pytorch_model
from hpo.tracking.runs import StudyTracker, default_artifact_root, default_tracking_uri

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPOCH_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def epoch_metrics(epoch: int) -> dict[str, float]:
    return {
        "train_loss": 1.0 / epoch,
        "train_accuracy": 1.0 - 0.5 / epoch,
        "val_loss": 1.2 / epoch,
        "val_accuracy": 0.9 - 0.5 / epoch,
    }


def parent_of(tracker: StudyTracker) -> str:
    assert tracker.parent_run_id is not None
    return tracker.parent_run_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- defaults ---------------------------------------------------------------------------------
def test_default_tracking_uri_is_the_env_or_mlflow_ui_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert default_tracking_uri() == "http://mlflow:5000"


def test_artifacts_go_to_mlartifacts_next_to_the_database(workdir: Path) -> None:
    assert default_artifact_root("sqlite:///mlflow.db") == str(workdir / "mlartifacts")
    assert default_artifact_root("sqlite:////data/x/mlflow.db") == "/data/x/mlartifacts"
    assert default_artifact_root("postgresql://u@db/mlflow") == str(workdir / "mlartifacts")


# -- the experiment ---------------------------------------------------------------------------
def test_experiment_is_named_after_the_study_and_created_once(
    tracking_uri: str, workdir: Path
) -> None:
    first = StudyTracker(tracking_uri, "exp-once")
    experiment_id = first.experiment_id
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment(experiment_id)
    assert experiment.name == "exp-once"
    # where `mlflow server` run in this directory keeps the artifacts of experiments it creates
    assert experiment.artifact_location == str(workdir / "mlartifacts" / experiment_id)
    assert StudyTracker(tracking_uri, "exp-once").experiment_id == experiment_id


def test_experiment_creation_tolerates_a_concurrent_creator(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    winner = StudyTracker(tracking_uri, "raced").experiment_id
    loser = StudyTracker(tracking_uri, "raced")
    real_get = loser.client.get_experiment_by_name
    calls = []

    def stale_get(name: str):  # the other worker created it right after our first look
        calls.append(name)
        return None if len(calls) == 1 else real_get(name)

    monkeypatch.setattr(loser.client, "get_experiment_by_name", stale_get)
    assert loser.experiment_id == winner
    assert len(calls) == 2


OPEN_AT = r"""
import sys, time
from hpo.tracking.runs import StudyTracker
at = float(sys.argv[2])
time.sleep(max(0.0, at - time.time()))
tracker = StudyTracker(sys.argv[1], sys.argv[3])
tracker.check_connection()
print(tracker.experiment_id)
"""


@pytest.mark.slow
def test_a_new_sqlite_store_opened_by_several_processes_at_once_works_for_all(
    tmp_path: Path,
) -> None:
    """Two studies (on a Postgres storage, whose study locks differ) open one new local
    ``mlflow.db`` at the same moment: MLflow's table creation and migrations are not safe to run
    twice at once (before the store's lock file, 9 of 12 such processes failed)."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    at = str(time.time() + 5)  # past the imports: the processes open the store together
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AT, uri, at, f"study-{k}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for k in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    experiments = MlflowClient(uri).search_experiments()
    assert sorted(e.name for e in experiments) == ["Default", "study-0", "study-1", "study-2"]


def test_deleted_experiment_is_refused_with_the_fix(tracking_uri: str) -> None:
    tracker = StudyTracker(tracking_uri, "gone")
    MlflowClient(tracking_uri).delete_experiment(tracker.experiment_id)
    with pytest.raises(TrackingError, match=r"was deleted.*mlflow experiments restore"):
        StudyTracker(tracking_uri, "gone").check_connection()


def test_experiment_with_server_side_artifacts_needs_the_server(tracking_uri: str) -> None:
    MlflowClient(tracking_uri).create_experiment("served", artifact_location="mlflow-artifacts:/9")
    with pytest.raises(TrackingError, match="use that server's http:// URI"):
        StudyTracker(tracking_uri, "served").check_connection()


def test_sqlite_store_is_switched_to_wal(tracking_uri: str) -> None:
    tracker = StudyTracker(tracking_uri, "wal")
    tracker.check_connection()
    engine = tracker.client._tracking_client.store.engine
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


# -- reachability -----------------------------------------------------------------------------
def test_unreachable_server_fails_fast_with_tracking_error() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.perf_counter()
    with pytest.raises(TrackingError) as caught:
        StudyTracker(uri, "x").check_connection()
    assert time.perf_counter() - started < 5
    assert str(caught.value).startswith(
        f"tracking_uri: cannot reach MLflow tracking server at {uri}: "
    )


def test_unhealthy_server_is_reported_with_its_status() -> None:
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Unhealthy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Unhealthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(TrackingError, match="GET /health answered HTTP 503"):
            StudyTracker(f"http://127.0.0.1:{server.server_port}", "x").check_connection()
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_database_fails_fast_and_hides_the_password() -> None:
    uri = f"postgresql+psycopg://bob:secret@127.0.0.1:{free_port()}/mlflow"
    started = time.perf_counter()
    with pytest.raises(TrackingError, match="cannot reach the tracking database") as caught:
        StudyTracker(uri, "x").check_connection()
    assert time.perf_counter() - started < 5
    assert "secret" not in str(caught.value)


# -- the parent run ---------------------------------------------------------------------------
def test_parent_run_is_named_after_the_study(tracker: StudyTracker) -> None:
    parent = tracker.client.get_run(parent_of(tracker))
    assert parent.info.run_name == "demo"
    assert parent.info.status == "RUNNING"
    assert parent.info.experiment_id == tracker.experiment_id
    assert parent.data.tags["hpo.study"] == "demo"
    assert parent.data.tags["hpo.spec_hash"] == "abc"
    assert parent.data.params == {"trials": "3"}
    assert "mlflow.parentRunId" not in parent.data.tags


def test_ensure_parent_run_reopens_an_ended_parent(tracker: StudyTracker) -> None:
    parent_id = parent_of(tracker)
    tracker.end_parent_run("FINISHED")
    assert tracker.client.get_run(parent_id).info.status == "FINISHED"

    resumed = StudyTracker(tracker.tracking_uri, "demo")
    again = resumed.ensure_parent_run(
        parent_id, tags={"hpo.spec_hash": "abc", "hpo.storage": "x"}, params={"trials": 3, "new": 1}
    )
    assert again == parent_id
    run = tracker.client.get_run(parent_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags["hpo.storage"] == "x"
    assert run.data.params == {"trials": "3", "new": "1"}
    assert len(tracker.client.search_runs([tracker.experiment_id])) == 1


def test_ensure_parent_run_replaces_an_unknown_id(tracker: StudyTracker) -> None:
    other = StudyTracker(tracker.tracking_uri, "demo")
    new_id = other.ensure_parent_run("0" * 32, tags={}, params={})
    assert new_id not in ("0" * 32, tracker.parent_run_id)
    assert other.client.get_run(new_id).info.run_name == "demo"


def test_end_parent_run_running_leaves_it_open(tracker: StudyTracker) -> None:
    tracker.end_parent_run("RUNNING")
    run = tracker.client.get_run(parent_of(tracker))
    assert run.info.status == "RUNNING"
    assert run.info.end_time is None
    tracker.end_parent_run()
    run = tracker.client.get_run(parent_of(tracker))
    assert run.info.status == "FINISHED"
    assert run.info.end_time is not None


def test_parent_summary_and_metrics_on_other_runs(tracker: StudyTracker) -> None:
    tracker.log_parent(metrics={"n_complete": 1.0}, tags={"hpo.best_trial": "0"}, step=0)
    tracker.log_parent_metrics({"n_complete": 2.0}, step=1)
    tracker.set_parent_tags({"hpo.best_trial": "1"})
    trial = tracker.start_trial(1, {})
    tracker.log_to_run(trial.run_id, metrics={"test_accuracy": 0.9})
    tracker.log_to_run(None, metrics={"ignored": 1.0})
    client = tracker.client
    history = client.get_metric_history(parent_of(tracker), "n_complete")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 2.0)]
    assert client.get_run(parent_of(tracker)).data.tags["hpo.best_trial"] == "1"
    assert client.get_run(trial.run_id).data.metrics["test_accuracy"] == 0.9


def test_trial_runs_open_in_the_background_against_a_server_only(tracking_uri: str) -> None:
    """Against a server, opening a run is waiting (the trial trains meanwhile); on a local or
    database store it is Python work that would only take turns with the training loop."""
    assert StudyTracker("http://127.0.0.1:5000", "s").opens_in_background
    assert StudyTracker("HTTPS://mlflow.example.org", "s").opens_in_background
    assert not StudyTracker(tracking_uri, "s").opens_in_background
    assert not StudyTracker("postgresql://u@db/mlflow", "s").opens_in_background


def test_start_trial_needs_the_parent(tracking_uri: str) -> None:
    with pytest.raises(RuntimeError, match="ensure_parent_run"):
        StudyTracker(tracking_uri, "orphan").start_trial(0, {})


# -- a whole trial ----------------------------------------------------------------------------
def test_a_complete_trial_as_the_ui_shows_it(tracker: StudyTracker) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    y = np.arange(30) % 3
    params = {"lr": 0.01, "width": 8, "optimizer": "adam", "notes": "x" * 7000}

    run = tracker.start_trial(7, params, tags={"hpo.device": "cpu"})
    history = []
    for epoch in range(1, 6):
        metrics = epoch_metrics(epoch)
        run.log_epoch(epoch, metrics)
        history.append({"epoch": float(epoch), **metrics})
    final = {
        "val_accuracy": history[-1]["val_accuracy"],  # same as the last epoch: not logged twice
        "val_loss": history[-1]["val_loss"],
        "val_precision": 0.5,
        "val_recall": 0.4,
        "val_f1": 0.45,
        "val_roc_auc": 0.7,
        "n_params": 67.0,
        "train_seconds": 0.1,
    }
    run.log_final(final)
    with torch.no_grad():
        proba = torch.softmax(model(torch.from_numpy(X)), dim=1).numpy()
    run.log_plots(y, proba, ["a", "b", "c"], history)
    model_uri = run.log_model(model, X[:5])
    run.end("COMPLETE")

    client = tracker.client
    child = client.get_run(run.run_id)
    # nesting, name, tags
    assert child.info.run_name == "trial-0007"
    assert child.info.experiment_id == tracker.experiment_id
    assert child.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    assert child.data.tags["hpo.study"] == "demo"
    assert child.data.tags["hpo.trial"] == "7"
    assert child.data.tags["hpo.state"] == "COMPLETE"
    assert child.data.tags["hpo.device"] == "cpu"
    assert child.info.status == "FINISHED"
    assert child.info.end_time is not None
    # params: stringified, long values cut at MLflow's limit
    assert child.data.params["lr"] == "0.01"
    assert child.data.params["width"] == "8"
    assert child.data.params["optimizer"] == "adam"
    assert len(child.data.params["notes"]) == 6000
    # one point per epoch on every curve, finals at the last step
    for key in EPOCH_KEYS:
        points = client.get_metric_history(run.run_id, key)
        assert [m.step for m in sorted(points, key=lambda m: m.step)] == [1, 2, 3, 4, 5], key
    for key, value in final.items():
        assert child.data.metrics[key] == pytest.approx(value), key
    assert [m.step for m in client.get_metric_history(run.run_id, "val_f1")] == [5]
    # the three plots, as SVG documents
    artifacts = {a.path: a for a in client.list_artifacts(run.run_id)}
    expected = {"confusion_matrix.svg", "roc_curves.svg", "learning_curves.svg"}
    assert expected <= set(artifacts)
    for name in expected:
        assert (artifacts[name].file_size or 0) > 1000
        local = Path(client.download_artifacts(run.run_id, name, str(Path.cwd())))
        root = ET.fromstring(local.read_text(encoding="utf-8"))
        assert root.tag == "{http://www.w3.org/2000/svg}svg", name
    # the model: a LoggedModel of this run, in the study's experiment, and it predicts the same
    assert model_uri.startswith("models:/m-")
    logged = client.get_logged_model(model_uri.split("/")[-1])
    assert logged.experiment_id == tracker.experiment_id
    assert logged.source_run_id == run.run_id
    assert logged.status == LoggedModelStatus.READY
    assert logged.params["optimizer"] == "adam"
    assert logged.artifact_location.startswith(str(Path.cwd() / "mlartifacts"))
    loaded = load_pytorch_model(model_uri, tracking_uri=tracker.tracking_uri)
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(
            loaded(torch.from_numpy(X)).numpy(), model(torch.from_numpy(X)).numpy(), atol=1e-6
        )


@pytest.mark.parametrize(
    ("state", "status"), [("COMPLETE", "FINISHED"), ("PRUNED", "KILLED"), ("FAIL", "FAILED")]
)
def test_run_status_mirrors_the_trial_state(
    tracker: StudyTracker, state: runs.TrialState, status: str
) -> None:
    run = tracker.start_trial(3, {"lr": 0.1})
    run.end(state, "ValueError: boom" if state == "FAIL" else None)
    child = tracker.client.get_run(run.run_id)
    assert child.info.status == status
    assert child.info.end_time is not None
    assert child.data.tags["hpo.state"] == state
    assert ("hpo.error" in child.data.tags) == (state == "FAIL")
    if state == "FAIL":
        assert child.data.tags["hpo.error"] == "ValueError: boom"


def test_end_is_idempotent_and_truncates_the_error(tracker: StudyTracker) -> None:
    run = tracker.start_trial(4, {})
    run.end("FAIL", "E" * 9000)
    run.end("COMPLETE")  # ignored: the first end counts
    child = tracker.client.get_run(run.run_id)
    assert child.info.status == "FAILED"
    assert child.data.tags["hpo.state"] == "FAIL"
    assert child.data.tags["hpo.error"] == "E" * 5000
    with pytest.raises(ValueError, match="state must be one of"):
        tracker.start_trial(5, {}).end("DONE")  # type: ignore[arg-type]


def test_a_store_that_is_away_at_the_end_keeps_the_run_in_the_spool(
    tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpo.tracking.finisher import sync_spool
    from hpo.tracking.spool import list_jobs

    monkeypatch.setenv("HPO_TRACKING_OUTAGE_SECONDS", "0.2")
    tracker.finisher = None  # a new inline sender, with the short outage
    run = tracker.start_trial(9, {})
    run.log_epoch(1, epoch_metrics(1))
    run.log_epoch(2, epoch_metrics(2))  # buffered (EPOCH_FLUSH_SECONDS)
    run.log_final({"val_f1": 0.5})
    real_terminate = tracker._terminate

    def down(run_id: str, status: str) -> None:
        raise TrackingError("tracking_uri: ending run failed") from ConnectionRefusedError(
            "Connection refused"
        )

    monkeypatch.setattr(tracker, "_terminate", down)
    sent = run.end("COMPLETE")
    assert sent is not None and not sent.ok and sent.kept
    assert "unreachable" in (sent.error or "")
    assert len(list_jobs("demo")) == 1
    client = tracker.client
    assert client.get_run(run.run_id).info.status == "RUNNING"
    run.end("FAIL", "ignored: the first end counts")

    monkeypatch.setattr(tracker, "_terminate", real_terminate)
    (again,) = sync_spool("demo", tracker)
    assert again.ok
    assert list_jobs("demo") == []
    child = client.get_run(run.run_id)
    assert child.info.status == "FINISHED"
    assert child.data.tags["hpo.state"] == "COMPLETE"
    # every point once, although the metrics were sent before the failed step
    assert sorted(m.step for m in client.get_metric_history(run.run_id, "val_loss")) == [1, 2]
    assert [m.value for m in client.get_metric_history(run.run_id, "val_f1")] == [0.5]


def test_a_job_for_another_store_is_not_sent_here(
    tracker: StudyTracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpo.tracking.finisher import sync_spool
    from hpo.tracking.spool import Job, list_jobs, write_job

    write_job(Job("demo", 1, "abc", "COMPLETE", tracking_uri="sqlite:////elsewhere/mlflow.db"))
    (sent,) = sync_spool("demo", tracker)
    assert not sent.ok and "elsewhere" in (sent.error or "")
    assert len(list_jobs("demo")) == 1


def test_pruned_run_keeps_its_buffered_curve_and_reason(
    tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "EPOCH_FLUSH_SECONDS", 3600.0)
    run = tracker.start_trial(2, {"lr": 0.01, "dropout": 0.2})
    for epoch in (1, 2, 3):
        run.log_epoch(epoch, epoch_metrics(epoch))
    client = tracker.client
    # a trial shorter than the flush interval writes nothing while it trains ...
    assert client.get_metric_history(run.run_id, "val_loss") == []
    assert client.get_run(run.run_id).data.params == {}
    run.end("PRUNED", "pruned at epoch 3")
    # ... and everything with its end
    points = client.get_metric_history(run.run_id, "val_loss")
    assert sorted(m.step for m in points) == [1, 2, 3]
    child = client.get_run(run.run_id)
    assert child.info.status == "KILLED"
    assert child.data.tags["hpo.reason"] == "pruned at epoch 3"
    assert child.data.params == {"lr": "0.01", "dropout": "0.2"}


def test_params_go_with_the_first_write_of_a_longer_trial(
    tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "EPOCH_FLUSH_SECONDS", 3600.0)
    run = tracker.start_trial(3, {"lr": 0.01})
    run.log_epoch(1, epoch_metrics(1))
    assert tracker.client.get_run(run.run_id).data.params == {}
    monkeypatch.setattr(runs, "EPOCH_FLUSH_SECONDS", 0.0)  # the interval has passed
    run.log_epoch(2, epoch_metrics(2))
    live = tracker.client.get_run(run.run_id)
    assert live.info.status == "RUNNING"
    assert live.data.params == {"lr": "0.01"}
    points = tracker.client.get_metric_history(run.run_id, "val_loss")
    assert sorted(m.step for m in points) == [1, 2]
    run.end("COMPLETE")
    assert tracker.client.get_run(run.run_id).data.params == {"lr": "0.01"}


def test_epochs_are_written_as_time_passes(
    tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "EPOCH_FLUSH_SECONDS", 0.0)  # a slow trial: every epoch
    run = tracker.start_trial(1, {})
    for epoch in (1, 2):
        run.log_epoch(epoch, epoch_metrics(epoch))
    points = tracker.client.get_metric_history(run.run_id, "train_loss")
    assert sorted(m.step for m in points) == [1, 2]


def test_final_metric_that_differs_from_the_last_epoch_is_logged(tracker: StudyTracker) -> None:
    run = tracker.start_trial(6, {})
    run.log_epoch(1, epoch_metrics(1))
    run.log_final({"val_loss": 0.25})
    run.end("COMPLETE")
    assert tracker.client.get_run(run.run_id).data.metrics["val_loss"] == 0.25


def test_log_figure_accepts_bytes_svg_text_and_matplotlib_figures(
    tracker: StudyTracker, tmp_path: Path
) -> None:
    from matplotlib.figure import Figure

    from hpo.tracking.plots import learning_curves_figure

    run = tracker.start_trial(8, {})
    run.log_figure(PNG_MAGIC + b"rest", "raw.png")
    svg = learning_curves_figure([epoch_metrics(1)])
    run.log_figure(svg, "plots/curves.svg")
    run.log_figure(Figure(figsize=(2, 2)), "plots/empty.png")
    client = tracker.client
    listed = [a.path for a in client.list_artifacts(run.run_id, "plots")]
    assert listed == ["plots/curves.svg", "plots/empty.png"]
    assert "raw.png" in {a.path for a in client.list_artifacts(run.run_id)}
    back = Path(client.download_artifacts(run.run_id, "plots/curves.svg", str(tmp_path)))
    assert back.read_text(encoding="utf-8") == svg
    png = Path(client.download_artifacts(run.run_id, "plots/empty.png", str(tmp_path)))
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_two_stores_in_two_threads_keep_their_models(
    tracker: StudyTracker, tmp_path: Path, template_db: Path
) -> None:
    """log_model switches MLflow's global tracking URI: threads must not see each other's."""
    import mlflow

    other_db = tmp_path / "other" / "mlflow.db"
    other_db.parent.mkdir()
    other_db.write_bytes(template_db.read_bytes())
    other = StudyTracker(f"sqlite:///{other_db}", "demo")
    other.ensure_parent_run(None, tags={}, params={})
    before = mlflow.get_tracking_uri()
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def work(which: StudyTracker, key: str) -> None:
        try:
            for i in range(2):
                run = which.start_trial(i, {})
                results[f"{key}{i}"] = run.log_model(nn.Linear(3, 2), np.ones((4, 3), np.float32))
                run.end("COMPLETE")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(tracker, "a")),
        threading.Thread(target=work, args=(other, "b")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for key, uri in results.items():
        owner = tracker if key.startswith("a") else other
        model = owner.client.get_logged_model(uri.split("/")[-1])
        assert model.experiment_id == owner.experiment_id
    assert mlflow.get_tracking_uri() == before


def test_many_params_are_split_into_batches_mlflow_accepts(tracker: StudyTracker) -> None:
    run = tracker.start_trial(10, {f"p{i:03d}": i for i in range(250)})
    run.flush()
    assert len(tracker.client.get_run(run.run_id).data.params) == 250

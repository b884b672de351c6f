"""The end of a trial's run, sent from the spool: complete, once, and through failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.entities import LoggedModelStatus

from hpo.models import FAMILIES
from hpo.tracking import spool, sql_store
from hpo.tracking.finisher import Finisher, sync_spool
from hpo.tracking.models import load_pytorch_model
from hpo.tracking.runs import StudyTracker, TrialRun
from hpo.tracking.spool import ModelInputs, PlotInputs

EPOCHS = 3


def a_trained_mlp() -> tuple[torch.nn.Module, dict[str, object]]:
    family = FAMILIES.get("mlp")()
    params = family.Params(depth=1, width=8)
    torch.manual_seed(0)
    model = family.build(params, (4,), 3)
    model.eval()
    return model, params.model_dump(mode="json")


def a_finished_trial(
    tracker: StudyTracker, number: int = 0, *, background: bool = False
) -> tuple[TrialRun, torch.nn.Module, np.ndarray, str | None]:
    """A trial run as the objective leaves it: epochs logged, the end collected. ``background``:
    its run and LoggedModel opened while it trains, as against a tracking server."""
    run = tracker.start_trial(number, {"lr": 0.1}, background=background, model=background)
    history = []
    for epoch in range(1, EPOCHS + 1):
        metrics = {"train_loss": 1.0 / epoch, "val_loss": 1.1 / epoch, "val_accuracy": 0.5}
        run.log_epoch(epoch, metrics)
        history.append({"epoch": float(epoch), **metrics})
    run.log_final({"val_accuracy": 0.5, "val_f1": 0.4})
    model, family_params = a_trained_mlp()
    X = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    y = np.arange(12) % 3
    with torch.no_grad():
        proba = torch.softmax(model(torch.from_numpy(X)), dim=1).numpy()
    run.attach_plots(PlotInputs(y, proba, ["a", "b", "c"], history, [[4, 4, 4]] * EPOCHS))
    uri = run.attach_model(
        ModelInputs(
            family="mlp",
            family_params=family_params,
            input_shape=[4],
            n_classes=3,
            state_dict=model.state_dict(),
            example=X[:5],
            metadata={"hpo": {"study": "demo"}},
            params={},
            tags={},
            step=0,
        )
    )
    return run, model, X, uri


def assert_complete(
    tracker: StudyTracker, run: TrialRun, model: torch.nn.Module, X: np.ndarray, uri: str
) -> None:
    client = tracker.client
    child = client.get_run(run.run_id)
    assert child.info.status == "FINISHED"
    assert child.data.tags["hpo.state"] == "COMPLETE"
    assert "hpo.error" not in child.data.tags
    for key in ("train_loss", "val_loss"):
        points = client.get_metric_history(run.run_id, key)
        assert sorted(m.step for m in points) == list(range(1, EPOCHS + 1)), key
    assert [m.value for m in client.get_metric_history(run.run_id, "val_f1")] == [0.4]
    names = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"confusion_matrix.svg", "roc_curves.svg", "learning_curves.svg"} <= names
    assert "prediction_distribution.svg" in names
    logged = client.get_logged_model(uri.removeprefix("models:/"))
    assert logged.status == LoggedModelStatus.READY
    assert logged.source_run_id == run.run_id
    assert logged.params["lr"] == "0.1"
    loaded = load_pytorch_model(uri, tracking_uri=tracker.tracking_uri)
    with torch.no_grad():
        np.testing.assert_allclose(
            loaded(torch.from_numpy(X)).numpy(), model(torch.from_numpy(X)).numpy(), atol=1e-6
        )


def test_a_trial_ends_complete_with_its_plots_and_model(tracker: StudyTracker) -> None:
    run, model, X, uri = a_finished_trial(tracker)
    # The model's URI is known before the trial ends: the trial records it.
    assert uri is not None and uri.startswith("models:/m-")
    assert tracker.client.get_run(run.run_id).info.status == "RUNNING"
    sent = run.end("COMPLETE")
    assert sent is not None and sent.ok and (sent.trial, sent.state) == (0, "COMPLETE")
    assert_complete(tracker, run, model, X, uri)
    assert spool.list_jobs("demo") == []


def test_a_pruned_trial_sends_no_artifacts(tracker: StudyTracker) -> None:
    run, *_ = a_finished_trial(tracker)
    run.end("PRUNED", "pruned at epoch 3")
    client = tracker.client
    child = client.get_run(run.run_id)
    assert child.info.status == "KILLED" and child.data.tags["hpo.reason"] == "pruned at epoch 3"
    assert client.list_artifacts(run.run_id) == []


def test_a_run_opened_in_the_background_gets_the_model_made_with_it(
    tracker: StudyTracker,
) -> None:
    opened: list[str] = []
    run = tracker.start_trial(5, {"lr": 0.1}, background=True, model=True, on_open=opened.append)
    run_id = run.run_id  # waits for the run
    assert opened == [run_id]
    model_id = run.opened_model_id
    assert model_id is not None
    # Made with the run, before the trial has a model: PENDING, with the run's params and tags.
    logged = tracker.client.get_logged_model(model_id)
    assert logged.status == LoggedModelStatus.PENDING
    assert logged.source_run_id == run_id
    assert logged.params == {"lr": "0.1"}
    assert (logged.tags["hpo.study"], logged.tags["hpo.trial"]) == ("demo", "5")

    run, model, X, uri = a_finished_trial(tracker, 6, background=True)
    assert uri == f"models:/{run.opened_model_id}"
    sent = run.end("COMPLETE")
    assert sent is not None and sent.ok
    assert_complete(tracker, run, model, X, uri)
    experiment = [tracker.experiment_id]
    sources = [m.source_run_id for m in tracker.client.search_logged_models(experiment)]
    assert sources.count(run.run_id) == 1  # its one model: none made again at the end


@pytest.mark.parametrize("state", ["PRUNED", "FAIL"])
def test_a_trial_that_ends_without_a_model_leaves_none_behind(
    tracker: StudyTracker, state: str
) -> None:
    from hpo.tracking.finisher import discard_model

    run = tracker.start_trial(2, {"lr": 0.1}, background=True, model=True)
    run.log_epoch(1, {"val_loss": 1.0})
    model_id = run.opened_model_id
    assert model_id is not None
    sent = run.end(state, "pruned at epoch 1" if state == "PRUNED" else "boom")  # type: ignore[arg-type]
    assert sent is not None and sent.ok
    client = tracker.client
    assert client.get_run(run.run_id).info.status == ("KILLED" if state == "PRUNED" else "FAILED")
    assert client.search_logged_models([tracker.experiment_id]) == []
    discard_model(tracker, model_id)  # a repeat (an end step sent again) is harmless


def test_a_run_that_cannot_be_opened_fails_where_it_is_needed_not_before(
    tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpo.errors import NotStarted

    # Tried again after 0.5 s and 1 s, given up at 1.5 s: long enough for one epoch.
    monkeypatch.setenv("HPO_TRACKING_OUTAGE_SECONDS", "2")

    def refused(*args: object, **kwargs: object) -> None:
        raise ConnectionRefusedError("Connection refused")

    tracker.start_trial(0, {}).end("FAIL", "a process's first run is opened at once")
    monkeypatch.setattr(tracker.client, "create_run", refused)
    monkeypatch.setattr(sql_store, "create_run", refused)  # what a SQLite store is written by
    monkeypatch.setattr(tracker.client, "search_runs", refused)
    run = tracker.start_trial(3, {"lr": 0.1}, background=True, model=True)
    run.log_epoch(1, {"val_loss": 1.0})  # training goes on meanwhile
    with pytest.raises(NotStarted, match="unreachable for 2 s while creating the run of trial 3"):
        run.run_id  # noqa: B018
    assert not run.open and run.opened_model_id is None
    with pytest.raises(NotStarted):  # the trial stops training: it has nowhere to log
        run.log_epoch(2, {"val_loss": 0.9})
    with pytest.raises(NotStarted, match="`hpo sync demo` sends them"):
        run.end("COMPLETE")
    assert spool.list_jobs("demo") == []


def test_a_job_that_fails_for_good_marks_the_run_and_is_sent_once_it_can(
    tracker: StudyTracker, workdir: Path
) -> None:
    run, model, X, uri = a_finished_trial(tracker)
    assert uri is not None
    # The run's artifact directory cannot be written: a file stands where it should be.
    artifacts = Path(tracker.client.get_run(run.run_id).info.artifact_uri.removeprefix("file://"))
    artifacts.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_text("not a directory")
    sent = run.end("COMPLETE")
    assert sent is not None and not sent.ok and sent.kept
    error = sent.error or ""
    # The plots are written there directly ("File exists": the directory cannot be made), or
    # copied there by MLflow ("Not a directory").
    assert "uploading plots" in error and ("File exists" in error or "Not a directory" in error)
    client = tracker.client
    child = client.get_run(run.run_id)
    assert child.info.status == "FAILED"
    assert child.data.tags["hpo.error"].startswith("could not log the end of the trial's run")
    assert client.get_logged_model(uri.removeprefix("models:/")).status == LoggedModelStatus.FAILED
    (path,) = spool.list_jobs("demo")
    assert spool.read_progress(path)["done"] == ["metrics"]  # the plots step failed

    artifacts.unlink()  # the disk is fixed
    (again,) = sync_spool("demo", tracker)
    assert again.ok
    assert_complete(tracker, run, model, X, uri)
    # the metrics were not sent twice
    assert len(client.get_metric_history(run.run_id, "val_loss")) == EPOCHS


def test_a_job_cut_off_mid_step_is_sent_again_without_duplicates(tracker: StudyTracker) -> None:
    run, model, X, uri = a_finished_trial(tracker)
    assert uri is not None
    # A sender that dies while logging the model: the metrics and plots are in the store,
    # the model step started and did not finish.
    tracker.sender.submit = lambda path: None  # type: ignore[method-assign]
    run.end("COMPLETE")
    (path,) = spool.list_jobs("demo")
    tracker.finisher = None
    from mlflow.entities import Metric

    job = spool.read_job(path)
    tracker._log_batch(run.run_id, metrics=[Metric(k, v, ts, s) for k, v, s, ts in job.metrics])
    spool.write_progress(path, {"done": ["metrics"], "started": ["metrics", "plots"]})
    (sent,) = sync_spool("demo", tracker)
    assert sent.ok
    assert_complete(tracker, run, model, X, uri)
    assert len(tracker.client.get_metric_history(run.run_id, "val_loss")) == EPOCHS


def test_only_a_step_an_earlier_attempt_started_is_checked_first(
    tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step is marked started with the previous one's end (one progress write per step); in
    the same attempt that is not a doubt: the model step reads the model's status and the run's
    outputs (two requests to a server) only after an attempt that may have got that far."""
    from hpo.tracking import finisher

    checks: list[str] = []
    ready, linked = finisher._Sender._model_ready, finisher._Sender._linked
    monkeypatch.setattr(
        finisher._Sender, "_model_ready", lambda s, m: checks.append("ready") or ready(s, m)
    )
    monkeypatch.setattr(
        finisher._Sender, "_linked", lambda s, m: checks.append("linked") or linked(s, m)
    )
    run, model, X, uri = a_finished_trial(tracker, 0)
    reads: list[str] = []
    store = tracker._store()
    get_run = store.get_run
    monkeypatch.setattr(store, "get_run", lambda r: reads.append(r) or get_run(r))
    sent = run.end("COMPLETE")
    assert sent is not None and sent.ok
    # The plots went to the run's artifact URI, known from its creation: the run is not read.
    assert reads == []
    monkeypatch.setattr(store, "get_run", get_run)
    assert_complete(tracker, run, model, X, uri)
    assert checks == []

    # The sender dies at the model step, which its progress shows started: the next attempt
    # checks it before it is redone.
    class Died(BaseException):
        pass

    def die(self: object, unsure: bool) -> None:
        raise Died

    run, model, X, uri = a_finished_trial(tracker, 1)
    with monkeypatch.context() as m:
        m.setattr(finisher._Sender, "_send_model", die)
        with pytest.raises(Died):
            run.end("COMPLETE")
    (path,) = spool.list_jobs("demo")
    progress = spool.read_progress(path)
    assert (progress["done"], progress["started"]) == (
        ["metrics", "plots"],
        ["metrics", "plots", "model"],
    )
    (again,) = sync_spool("demo", tracker)
    assert again.ok
    assert_complete(tracker, run, model, X, uri)
    assert checks == ["ready", "linked"]


def test_the_background_process_sends_while_the_caller_goes_on_and_is_replaced_if_it_dies(
    tracker: StudyTracker,
) -> None:
    finisher = Finisher(tracker, background=True)
    tracker.finisher = finisher
    warnings: list[str] = []
    finisher.warn = warnings.append
    finisher.start()
    first = a_finished_trial(tracker, 0)
    assert first[0].end("COMPLETE") is None  # handed over, not sent here
    # The process dies (before or after it sent the first job: either way nothing is lost).
    assert finisher._proc is not None
    finisher._proc.kill()
    finisher._proc.wait()
    second = a_finished_trial(tracker, 1)
    second[0].end("COMPLETE")
    sent = finisher.drain()
    assert {s.trial for s in sent if s.ok} >= {1}
    assert finisher.in_flight == 0
    for run, model, X, uri in (first, second):
        assert uri is not None
        assert_complete(tracker, run, model, X, uri)
    assert spool.list_jobs("demo") == []
    assert any("starting a new one" in w for w in warnings)


def test_jobs_left_by_an_earlier_process_are_sent_by_the_next_one(tracker: StudyTracker) -> None:
    run, model, X, uri = a_finished_trial(tracker)
    sender = tracker.sender
    sender.submit = lambda path: None  # type: ignore[method-assign]  # the process was killed
    run.end("COMPLETE")
    tracker.finisher = None
    assert len(spool.list_jobs("demo")) == 1
    sent = sync_spool("demo", tracker)
    assert [s.ok for s in sent] == [True]
    assert uri is not None
    assert_complete(tracker, run, model, X, uri)


def test_the_spool_survives_a_missing_study_directory(tracker: StudyTracker) -> None:
    assert sync_spool("demo", tracker) == []
    shutil.rmtree(spool.spool_root(), ignore_errors=True)
    assert sync_spool("demo", tracker) == []


def test_the_sender_runs_in_the_background_when_training_leaves_a_core_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from hpo.tracking import finisher
    from hpo.training import threads

    monkeypatch.delenv("HPO_FINISHER")
    assert not finisher.background_default("cpu")
    assert finisher.background_default("cpu", spare_cores=1)
    assert finisher.background_default("cuda:0")
    assert finisher.background_default("mps")
    # the idle cores: what one or two workers of this thread count leave of four cores
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert threads.spare_cores(1) == 2
    assert threads.spare_cores(2) == 0
    assert threads.spare_cores(3) == 0
    monkeypatch.setenv("HPO_FINISHER", "background")
    assert finisher.background_default("cpu")
    monkeypatch.setenv("HPO_FINISHER", "inline")
    assert not finisher.background_default("cuda")


def test_an_unreadable_job_is_reported_and_the_others_are_sent(tracker: StudyTracker) -> None:
    run, model, X, uri = a_finished_trial(tracker)
    tracker.sender.submit = lambda path: None  # type: ignore[method-assign]
    run.end("COMPLETE")
    tracker.finisher = None
    broken = spool.study_spool("demo") / "broken"
    broken.mkdir()
    (broken / spool.JOB_FILE).write_text("{not json")
    sent = {Path(s.path).name: s for s in sync_spool("demo", tracker)}
    assert sent["broken"].kept and "SpoolError" in (sent["broken"].error or "")
    assert sent[run.run_id].ok
    assert uri is not None
    assert_complete(tracker, run, model, X, uri)


def linked_metrics(tracker: StudyTracker, uri: str) -> set[tuple[str, float, int]]:
    logged = tracker.client.get_logged_model(uri.removeprefix("models:/"))
    return {(m.key, m.value, m.step) for m in logged.metrics or []}


def run_metrics_at(tracker: StudyTracker, run_id: str, step: int) -> set[tuple[str, float, int]]:
    """What MLflow links to a model logged at ``step``: every point of the run at that step."""
    keys = tracker.client.get_run(run_id).data.metrics
    return {
        (m.key, m.value, m.step)
        for key in keys
        for m in tracker.client.get_metric_history(run_id, key)
        if m.step == step
    }


def test_the_model_links_the_runs_metrics_at_its_step(tracker: StudyTracker) -> None:
    """The metrics of the last epoch and the final ones, as MLflow's own linking finds them
    (which reads every history of the run back; hpo sends the rows it has)."""
    run, _, _, uri = a_finished_trial(tracker)
    assert uri is not None
    sent = run.end("COMPLETE")
    assert sent is not None and sent.ok
    expected = run_metrics_at(tracker, run.run_id, EPOCHS)
    assert linked_metrics(tracker, uri) == expected
    assert {key for key, _, _ in expected} == {"train_loss", "val_loss", "val_accuracy", "val_f1"}
    for key in ("train_loss", "val_f1"):  # linked with the run's metrics: each point once
        history = tracker.client.get_metric_history(run.run_id, key)
        assert sorted(m.step for m in history) == sorted({m.step for m in history})
    outputs = tracker.client.get_run(run.run_id).outputs
    assert outputs is not None
    assert [(o.model_id, o.step) for o in outputs.model_outputs] == [
        (uri.removeprefix("models:/"), EPOCHS)
    ]


def test_a_job_of_an_older_version_links_through_mlflow(
    tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spooled before jobs carried the step's metrics: MLflow reads them back, same links."""
    import json

    run, _, _, uri = a_finished_trial(tracker)
    assert uri is not None
    tracker.finisher = Finisher(tracker, background=False)
    monkeypatch.setattr(tracker.finisher, "submit", lambda path: None)  # spooled, not sent
    run.end("COMPLETE")
    (job,) = spool.list_jobs("demo")
    record = json.loads((job / spool.JOB_FILE).read_text())
    del record["model"]["step_metrics"]
    (job / spool.JOB_FILE).write_text(json.dumps(record))
    assert spool.read_job(job).model.step_metrics is None  # type: ignore[union-attr]
    tracker.finisher = None
    (sent,) = sync_spool("demo", tracker)
    assert sent.ok
    assert linked_metrics(tracker, uri) == run_metrics_at(tracker, run.run_id, EPOCHS)
    assert len(linked_metrics(tracker, uri)) == 4


def test_the_background_sender_warms_up_before_its_first_job(
    tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first torch.export of a process costs seconds of imports: the background process
    pays them while the first trial trains; a warm-up that fails is said, and jobs still go."""
    import json

    from hpo.tracking import finisher, pt2_cache

    order: list[str] = []
    monkeypatch.setattr(pt2_cache, "warm_up", lambda: order.append("warm-up"))
    monkeypatch.setattr(
        finisher._OutageClock, "send", lambda self, path, tracker, warn: order.append(path.name)
    )
    monkeypatch.setattr(finisher, "asdict", lambda sent: {})
    header = json.dumps({"tracking_uri": tracker.tracking_uri, "study": "demo"})
    events: list[dict[str, object]] = []
    finisher.serve(iter([header, "/spool/job-1\n"]), events.append)
    assert order == ["warm-up", "job-1"]

    def broken() -> None:
        raise RuntimeError("no torch.export here")

    monkeypatch.setattr(pt2_cache, "warm_up", broken)
    order.clear()
    finisher.serve(iter([header, "/spool/job-2\n"]), events.append)
    assert order == ["job-2"]
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert warnings == ["could not warm up the model export: no torch.export here"]


def test_warm_up_traces_saves_and_reads_back_a_model() -> None:
    from hpo.tracking import pt2_cache

    pt2_cache.warm_up()  # raises if any of the steps a first model takes fails


def test_a_shared_worker_spools_and_the_watcher_sends(
    tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``hpo study start --workers N``: the workers (HPO_FINISHER=shared) only spool their runs;
    the process that started them sends them, and hears what was sent (the champion moves)."""
    from hpo.tracking.finisher import SpoolWatcher

    monkeypatch.setenv("HPO_FINISHER", "shared")
    tracker.finisher = Finisher(tracker)
    assert tracker.finisher.shared and not tracker.finisher.background
    runs = [a_finished_trial(tracker, number) for number in range(2)]
    assert [run.end("COMPLETE") for run, *_ in runs] == [None, None]
    assert len(spool.list_jobs("demo")) == 2  # waiting for the study's process
    assert tracker.client.get_run(runs[0][0].run_id).info.status == "RUNNING"

    heard: list[int] = []
    watcher = SpoolWatcher(
        Finisher(tracker, background=False, shared=False),
        on_sent=lambda sent: heard.extend(s.trial for s in sent if s.ok),
        every=0.01,
    )
    watcher.start()
    late, model, X, uri = a_finished_trial(tracker, 2)  # a job that comes while it watches
    late.end("COMPLETE")
    watcher.close()
    assert sorted(heard) == [0, 1, 2]
    assert spool.list_jobs("demo") == []
    assert uri is not None
    assert_complete(tracker, late, model, X, uri)


def test_a_shared_worker_whose_study_process_died_sends_its_runs_itself(
    tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    warnings: list[str] = []
    tracker.finisher = Finisher(tracker, shared=True, background=False, warn=warnings.append)
    first, *_ = a_finished_trial(tracker, 0)
    first.end("COMPLETE")
    assert len(spool.list_jobs("demo")) == 1  # left for the study process
    parent = os.getppid()
    monkeypatch.setattr(os, "getppid", lambda: parent + 1)  # it was killed: adopted by init
    second, model, X, uri = a_finished_trial(tracker, 1)
    second.end("COMPLETE")
    assert spool.list_jobs("demo") == []  # both sent, the one left behind first
    assert not tracker.finisher.shared
    assert len(warnings) == 1 and "sends its trial runs itself" in warnings[0]
    assert sorted(s.trial for s in tracker.finisher.poll() if s.ok) == [0, 1]
    assert uri is not None
    assert_complete(tracker, second, model, X, uri)

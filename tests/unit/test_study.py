"""The parent run's summary: one point per trial, written together rather than one call each."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest

from hpo.errors import TrackingError
from hpo.spec import parse_spec
from hpo.study import _ParentSummary
from hpo.tracking.runs import StudyTracker

SPEC = "name: demo\ndata: {source: sklearn, name: iris}\ntrials: 12\n"


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow database with its tables, copied for each test (creating them takes seconds)."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    StudyTracker(f"sqlite:///{path}", "template").client.search_experiments()
    return path


@pytest.fixture
def tracker(tmp_path: Path, template_db: Path) -> StudyTracker:
    shutil.copy(template_db, tmp_path / "mlflow.db")
    tracker = StudyTracker(f"sqlite:///{tmp_path}/mlflow.db", "demo")
    tracker.check_connection()
    tracker.ensure_parent_run(None, tags={}, params={})
    return tracker


def history(tracker: StudyTracker, key: str) -> list[tuple[int, float]]:
    assert tracker.parent_run_id is not None
    points = tracker.client.get_metric_history(tracker.parent_run_id, key)
    return sorted((m.step, m.value) for m in points)


def run_trials(summary: _ParentSummary, values: list[float]) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for value in values:
        trial = study.ask()
        study.tell(trial, value)
        summary(study, study.trials[-1])
    return study


def test_points_wait_for_the_interval_and_flush_writes_every_one(tracker: StudyTracker) -> None:
    summary = _ParentSummary(tracker, parse_spec(SPEC), interval=3600)
    run_trials(summary, [0.5, 0.9, 0.7])
    # the first trial's summary is written at once, the next two wait
    assert history(tracker, "n_complete") == [(0, 1.0)]
    summary.flush()
    assert history(tracker, "n_complete") == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert history(tracker, "best_val_accuracy") == [(0, 0.5), (1, 0.9), (2, 0.9)]
    assert tracker.parent_run_id is not None
    parent = tracker.client.get_run(tracker.parent_run_id)
    assert parent.data.tags["hpo.best_trial"] == "1"
    assert parent.data.metrics["n_complete"] == 3.0  # the latest point is the run's value
    summary.flush()  # nothing left: nothing written twice
    assert len(history(tracker, "n_complete")) == 3


def test_every_trial_writes_when_trials_are_longer_than_the_interval(
    tracker: StudyTracker,
) -> None:
    summary = _ParentSummary(tracker, parse_spec(SPEC), interval=0)
    run_trials(summary, [0.5, 0.6])
    assert history(tracker, "n_complete") == [(0, 1.0), (1, 2.0)]


def test_a_store_that_is_away_keeps_the_points_for_the_next_write(
    tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = _ParentSummary(tracker, parse_spec(SPEC), interval=0)
    real = tracker.log_parent_points
    calls: list[int] = []

    def away_once(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise TrackingError("the tracking server is away")
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tracker, "log_parent_points", away_once)
    warnings: list[str] = []
    monkeypatch.setattr(tracker, "_warn", warnings.append)
    run_trials(summary, [0.5, 0.6])
    assert history(tracker, "n_complete") == [(0, 1.0), (1, 2.0)]
    assert len(warnings) == 1 and "could not update the study's parent run" in warnings[0]


def test_a_point_is_the_study_when_its_trial_ended_read_once_per_write(
    tracker: StudyTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = _ParentSummary(tracker, parse_spec(SPEC), interval=3600)
    study = run_trials(summary, [0.5, 0.9, 0.7])
    # another worker's trial ends after this worker's points, before they are written
    late = study.ask()
    study.tell(late, 0.99)
    reads: list[int] = []
    real = study.get_trials
    monkeypatch.setattr(study, "get_trials", lambda *a, **k: reads.append(1) or real(*a, **k))
    summary.flush()
    assert len(reads) == 1  # one read for the two points waiting
    assert history(tracker, "n_complete") == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert history(tracker, "best_val_accuracy") == [(0, 0.5), (1, 0.9), (2, 0.9)]
    assert history(tracker, "best_trial") == [(0, 0.0), (1, 1.0), (2, 1.0)]


def test_multi_objective_points_carry_the_front_as_it_was(tracker: StudyTracker) -> None:
    spec = parse_spec(SPEC + "metrics: [val_accuracy, n_params]\n")
    summary = _ParentSummary(tracker, spec, interval=3600)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for values in ([0.5, 100.0], [0.9, 200.0], [0.95, 50.0]):  # the third dominates both
        trial = study.ask()
        study.tell(trial, values)
        summary(study, study.trials[-1])
    summary.flush()
    assert history(tracker, "pareto_front_size") == [(0, 1.0), (1, 2.0), (2, 1.0)]
    assert tracker.parent_run_id is not None
    assert tracker.client.get_run(tracker.parent_run_id).data.tags["hpo.pareto_trials"] == "2"


def test_the_study_end_writes_its_totals_as_the_parent_runs_values(tracker: StudyTracker) -> None:
    """Two workers: trial 1 ends (and writes its point) before trial 0. MLflow shows the point
    of the highest step as the run's value, so the run showed trial 1's view (one trial
    complete); the study's end writes the totals at that step, later, and they are shown."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = parse_spec(SPEC)
    study = optuna.create_study(direction="maximize")
    first, second = study.ask(), study.ask()
    worker_a, worker_b = _ParentSummary(tracker, spec, 0), _ParentSummary(tracker, spec, 0)
    study.tell(second, 0.6)
    worker_a(study, study.trials[1])
    study.tell(first, 0.9)
    worker_b(study, study.trials[0])
    assert tracker.parent_run_id is not None

    def shown() -> dict[str, float]:
        return dict(tracker.client.get_run(str(tracker.parent_run_id)).data.metrics)

    assert shown()["n_complete"] == 1.0 and shown()["best_trial"] == 1.0  # trial 1's view
    _ParentSummary(tracker, spec).final(study)
    assert shown()["n_complete"] == 2.0
    assert shown()["best_val_accuracy"] == 0.9 and shown()["best_trial"] == 0.0
    assert tracker.client.get_run(str(tracker.parent_run_id)).data.tags["hpo.best_trial"] == "0"
    # the per-trial points stay as they were; the totals are one more point at the last step
    assert history(tracker, "n_complete") == [(0, 2.0), (1, 1.0), (1, 2.0)]
    # ... and only when the run does not show them already: a second end adds nothing
    _ParentSummary(tracker, spec).final(study)
    assert len(history(tracker, "n_complete")) == 3

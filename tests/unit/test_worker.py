"""The worker loop without training: budget counting, stale trials, a live trial's result."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy.exc
from optuna.trial import TrialState

from hpo import worker
from hpo.errors import StorageError, StorageUnavailable
from hpo.spec import HeartbeatSpec
from hpo.storage import open_storage
from hpo.worker import (
    RECOVERED_FROM_ATTR,
    StaleTrialHandler,
    TrialLoop,
    adopt_unbeaten_trials,
    budget_usage,
)

# The tests play other workers with study.ask() outside the loop, which Optuna warns about.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


class FakeObjective:
    """Returns x; ``during`` runs inside the trial (to play another worker)."""

    def __init__(self, during: Any = None) -> None:
        self.attrs: dict[str, Any] = {}
        self.unsaved: set[str] = set()
        self.during = during

    def __call__(self, trial: optuna.Trial) -> float:
        self.attrs, self.unsaved = {}, set()
        x = trial.suggest_float("x", 0, 1)
        self.attrs["note"] = "kept"
        trial.set_user_attr("note", "kept")
        if self.during is not None:
            self.during(trial)
            self.during = None
        return x


def new_study(tmp_path: Path, retries: int = 2) -> tuple[optuna.Study, str]:
    url = f"sqlite:///{tmp_path}/hpo.db"
    beat = HeartbeatSpec(interval=1, grace=2, max_retries=retries)
    storage = open_storage(url, heartbeat=beat, on_stale=StaleTrialHandler(beat))
    return optuna.create_study(study_name="s", storage=storage), url


def fail_as_stale(study: optuna.Study, trial: optuna.Trial, handler: StaleTrialHandler) -> None:
    """What another worker does when the trial's heartbeat is older than the grace period."""
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    handler(study, study._storage.get_trial(trial._trial_id))


def test_the_budget_is_shared_and_exact(tmp_path: Path) -> None:
    study, url = new_study(tmp_path)
    ran = [TrialLoop(study, FakeObjective(), url, budget=5).run() for _ in range(3)]
    assert ran == [5, 0, 0]  # later workers find the budget full
    assert budget_usage(study) == (5, 0)


def test_a_retried_failure_does_not_eat_the_budget(tmp_path: Path) -> None:
    study, url = new_study(tmp_path)
    handler = StaleTrialHandler(HeartbeatSpec(interval=1, grace=2, max_retries=1))
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    fail_as_stale(study, dead, handler)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.params for t in waiting] == [dead.params]  # queued again, same parameters
    assert waiting[0].user_attrs == {}  # the dead run's attributes stay with the dead trial
    assert budget_usage(study) == (0, 0)
    TrialLoop(study, FakeObjective(), url, budget=3).run()
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 3
    assert study.trials[1].params == dead.params  # the retry ran first


def test_a_dead_workers_run_is_closed_and_its_pending_model_deleted(
    tmp_path: Path, workdir: Path
) -> None:
    """A worker died while its trial trained: the worker that fails the trial ends the trial's
    run FAILED with the reason, and deletes the LoggedModel opened with the run (the trial
    never got to its model)."""
    from hpo.objective import RUN_ID_ATTR
    from hpo.tracking.runs import StudyTracker

    tracker = StudyTracker(f"sqlite:///{workdir}/mlflow.db", "demo")
    tracker.check_connection()
    tracker.ensure_parent_run(None, tags={}, params={})
    study, _ = new_study(tmp_path)
    beat = HeartbeatSpec(interval=1, grace=2, max_retries=1)
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    run = tracker.start_trial(dead.number, {"x": dead.params["x"]}, background=True, model=True)
    dead.set_user_attr(RUN_ID_ATTR, run.run_id)
    assert run.opened_model_id is not None
    fail_as_stale(study, dead, StaleTrialHandler(beat, tracker))
    closed = tracker.client.get_run(run.run_id)
    assert closed.info.status == "FAILED"
    assert closed.data.tags["hpo.error"] == "worker died (no heartbeat for 2s)"
    assert tracker.client.search_logged_models([tracker.experiment_id]) == []


@pytest.mark.parametrize("budget", [2, 3])
def test_a_trial_claimed_while_the_lock_was_lost_is_given_back_if_over_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    """The study lock's connection dies while this worker creates its trial, and another worker,
    which then took the lock and did not count that trial, claims one too: with the budget
    then exceeded, this worker gives its trial back unrun (it counts for nothing) and claims
    again; with room left, it keeps it."""
    from contextlib import contextmanager

    study, url = new_study(tmp_path)
    TrialLoop(study, FakeObjective(), url, budget=1).run()  # one trial done
    real_start = worker.start_trial
    other: list[optuna.Trial] = []

    def racing_start(*args: Any, **kwargs: Any) -> optuna.Trial | None:
        if not other:
            other.append(study.ask())  # the other worker's claim, meanwhile
        return real_start(*args, **kwargs)

    class LostOnce:
        calls = 0

        def check(self) -> None:
            pass

        def lost(self) -> bool:
            LostOnce.calls += 1
            return LostOnce.calls == 1

    @contextmanager
    def lock(url: str, name: str) -> Any:
        yield LostOnce()

    monkeypatch.setattr(worker, "start_trial", racing_start)
    monkeypatch.setattr(worker, "study_lock", lock)
    trial, running = TrialLoop(study, FakeObjective(), url, budget=budget)._claim()
    mine = [t for t in study.get_trials() if t.number not in (0, other[0].number)]
    if budget == 2:
        # given back, then the claim again found the budget full (the other trial runs)
        assert trial is None and running == 1
        (given,) = mine
        assert given.state == TrialState.FAIL
        assert given.system_attrs[worker.OVER_BUDGET_ATTR] is True
        assert "over the budget" in given.user_attrs["error"]
        assert budget_usage(study) == (2, 1)
    else:
        assert trial is not None and [t.number for t in mine] == [trial.number]
        assert mine[0].state == TrialState.RUNNING
        assert budget_usage(study) == (3, 2)


def test_retries_stop_at_max_retries(tmp_path: Path) -> None:
    study, _ = new_study(tmp_path)
    handler = StaleTrialHandler(HeartbeatSpec(interval=1, grace=2, max_retries=1))
    first = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    fail_as_stale(study, first, handler)
    retry = study.ask()  # takes the queued retry
    fail_as_stale(study, retry, handler)
    assert not study.get_trials(states=(TrialState.WAITING,))
    assert budget_usage(study) == (1, 0)  # the last failure counts


@pytest.mark.parametrize("retry_taken", [False, True])
def test_a_live_trial_failed_as_stale_keeps_its_result(tmp_path: Path, retry_taken: bool) -> None:
    study, url = new_study(tmp_path)
    handler = StaleTrialHandler(HeartbeatSpec(interval=1, grace=2, max_retries=2))
    recovered: list[tuple[int, int]] = []

    def outage(trial: optuna.Trial) -> None:
        # While this trial trains, another worker fails it as stale (its heartbeats did not
        # reach the database) and queues a retry; maybe a third worker already took it.
        fail_as_stale(study, trial, handler)
        if retry_taken:
            study.ask()

    loop = TrialLoop(
        study,
        FakeObjective(during=outage),
        url,
        budget=None,
        n_trials=1,
        on_recovered=lambda old, new, attrs: recovered.append((old.number, new.number)),
    )
    loop.run()
    first = study.trials[0]
    assert first.state == TrialState.FAIL
    kept = [t for t in study.trials if t.system_attrs.get(RECOVERED_FROM_ATTR) == first.number]
    assert len(kept) == 1
    assert kept[0].state == TrialState.COMPLETE
    assert kept[0].value == first.params["x"]
    assert kept[0].params == first.params
    assert kept[0].user_attrs["note"] == "kept"
    assert recovered == [(0, kept[0].number)]
    if retry_taken:  # the result went to a new trial; the running retry is one more
        assert kept[0].number == 2
    else:  # the result filled the queued retry: nothing left to run, the budget stays exact
        assert kept[0].number == 1
        assert not study.get_trials(states=(TrialState.WAITING,))
        assert budget_usage(study) == (1, 0)


def test_a_worker_waits_for_running_trials_then_retries_a_dead_one(tmp_path: Path) -> None:
    study, url = new_study(tmp_path)
    # A trial of a worker that died: RUNNING, its last heartbeat long ago.
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study._storage.record_heartbeat(dead._trial_id)
    loop = TrialLoop(study, FakeObjective(), url, budget=1, heartbeat_interval=1, timeout=30)
    loop.run()  # budget full (1 running): waits until the grace period passes, then re-runs it
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].params == dead.params
    assert budget_usage(study) == (1, 0)


# -- a claim that fails half-way ---------------------------------------------------------------
def test_a_claimed_trial_has_a_heartbeat_before_it_runs(tmp_path: Path) -> None:
    # A worker that dies right after its claim, before its heartbeat thread starts: the trial
    # must still become stale after the grace period, be failed and be run again.
    study, url = new_study(tmp_path)
    dead_loop = TrialLoop(study, FakeObjective(), url, budget=1, heartbeat_interval=1)
    claimed, _ = dead_loop._claim()
    assert claimed is not None
    assert study._storage._get_stale_trial_ids(study._study_id) == []  # beating, not stale yet
    start = time.monotonic()
    loop = TrialLoop(study, FakeObjective(), url, budget=1, heartbeat_interval=1, timeout=30)
    loop.run()  # budget full (1 running): waits for the grace period, then re-runs it
    assert time.monotonic() - start < 15  # the grace is 2 s; without a heartbeat: never
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert budget_usage(study) == (1, 0)


def test_a_trial_left_without_a_heartbeat_is_adopted_then_retried(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # What a claim that failed between `ask` and the first heartbeat leaves (killed there, or
    # the connection lost after `ask` committed): RUNNING, no heartbeat row, no worker.
    study, url = new_study(tmp_path)
    study.ask()
    assert adopt_unbeaten_trials(study) == [0]  # gets a heartbeat: the grace period now applies
    assert adopt_unbeaten_trials(study) == []
    assert "trial 0 is RUNNING without a heartbeat" in capsys.readouterr().err
    study.ask()  # another one, left for the loop's own claim to find
    loop = TrialLoop(study, FakeObjective(), url, budget=2, heartbeat_interval=1, timeout=30)
    loop.run()
    states = [t.state for t in study.trials]
    assert states[:2] == [TrialState.FAIL, TrialState.FAIL]
    assert states[2:] == [TrialState.COMPLETE, TrialState.COMPLETE]  # the two retries
    assert budget_usage(study) == (2, 0)


def test_a_failed_first_heartbeat_is_retried_not_a_second_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, url = new_study(tmp_path)
    storage = study._storage
    real = storage.record_heartbeat
    failures = iter([True, True, False])

    def flaky(trial_id: int) -> None:
        if next(failures):
            raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("connection lost"))
        real(trial_id)

    monkeypatch.setattr(storage, "record_heartbeat", flaky)
    monkeypatch.setattr(worker, "time", _FastTime())  # no real back-off sleeps
    # A queued trial: Optuna's ask runs it, and the heartbeat is a write of its own.
    study.enqueue_trial({"x": 0.5})
    trial, _ = TrialLoop(study, FakeObjective(), url, budget=1, heartbeat_interval=1)._claim()
    assert trial is not None and trial.number == 0 and trial.suggest_float("x", 0, 1) == 0.5
    assert len(study.trials) == 1  # the heartbeat was retried, not the whole claim
    assert storage._backend._get_stale_trial_ids(study._study_id) == []
    assert list(study.trials[0].user_attrs) == [worker.WORKER_ATTR]


class _FastTime:
    """``time`` for hpo.worker whose sleep returns at once."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        return None


# -- storage outages ---------------------------------------------------------------------------
def test_an_unreachable_database_is_waited_for_a_bad_url_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "time", _FastTime())
    calls = iter([StorageUnavailable("storage: cannot connect"), StorageUnavailable("again")])

    def claim() -> str:
        for exc in calls:
            raise exc
        return "claimed"

    assert worker._through_outage("claiming", claim) == "claimed"
    with pytest.raises(StorageError, match="invalid URL"):
        worker._through_outage("claiming", _raise(StorageError("storage: invalid URL 'x'")))


def _raise(exc: Exception) -> Any:
    def fn() -> None:
        raise exc

    return fn


# -- Ctrl-C with --workers ---------------------------------------------------------------------
def counting_child(cleanup: float) -> worker.WorkerProcess:
    """A forked stand-in for a worker: after its first SIGINT it takes ``cleanup`` seconds to
    record its interrupted trial, then exits with the number of SIGINTs it got."""
    import os
    import signal
    import tempfile

    from hpo.forked import ForkedProcess

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        got = []
        signal.signal(signal.SIGINT, lambda *_: got.append(1))
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        end = time.monotonic() + cleanup
        while time.monotonic() < end:
            time.sleep(0.01)
        os._exit(len(got))
    return worker.WorkerProcess(ForkedProcess(pid, ["child"]), tempfile.TemporaryFile())


def interrupted() -> None:
    raise KeyboardInterrupt


def test_workers_that_got_the_terminals_ctrl_c_get_no_second_one() -> None:
    """A Ctrl-C at the terminal reaches the command and its workers (one process group): a
    second SIGINT from the command while they record their interrupted trials cut that short
    (a trial or its run left RUNNING in 6 of 9 tries with forked workers)."""
    import os
    import signal

    children = [counting_child(cleanup=0.5) for _ in range(2)]
    time.sleep(0.3)  # their handlers are in place
    for child in children:
        os.kill(child.process.pid, signal.SIGINT)  # the terminal's
    with pytest.raises(KeyboardInterrupt):
        worker.wait_for_workers(children, poll=interrupted)
    assert [c.process.returncode for c in children] == [1, 1]


def test_workers_get_the_ctrl_c_sent_to_the_command_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "FORWARD_SIGINT_AFTER", 0.2)
    children = [counting_child(cleanup=0.1) for _ in range(2)]
    time.sleep(0.3)
    with pytest.raises(KeyboardInterrupt):
        worker.wait_for_workers(children, poll=interrupted)
    assert [c.process.returncode for c in children] == [1, 1]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
@pytest.mark.parametrize("beats", [True, False])
def test_a_claim_is_one_transaction(
    tmp_path: Path, kind: str, beats: bool, request: pytest.FixtureRequest
) -> None:
    """With no trial queued, a new trial, its worker's name and its first heartbeat are one
    commit, and the trial is what Optuna's ask makes: numbered after the study's trials, RUNNING,
    its parameters suggested and kept as ask's trials keep them."""
    import sqlalchemy

    url = (
        request.getfixturevalue("postgres_url")
        if kind == "postgres"
        else f"sqlite:///{tmp_path}/hpo.db"
    )
    beat = HeartbeatSpec(interval=1, grace=2, max_retries=0)
    storage = open_storage(url, heartbeat=beat if beats else None)
    study = optuna.create_study(study_name="s", storage=storage)
    done = study.ask()  # one done, one queued-and-run, so numbers follow them
    study.tell(done, 1.0)
    study.enqueue_trial({"x": 0.25})
    loop = TrialLoop(
        study, FakeObjective(), url, budget=None, heartbeat_interval=1 if beats else None
    )
    queued, _ = loop._claim()
    assert queued is not None and queued.number == 1 and queued.suggest_float("x", 0, 1) == 0.25
    events: list[str] = []
    backend = study._storage._backend  # type: ignore[attr-defined]  # Optuna's cache wraps it
    sqlalchemy.event.listen(backend.engine, "commit", lambda conn: events.append("COMMIT"))
    sqlalchemy.event.listen(
        backend.engine,
        "before_cursor_execute",
        lambda conn, cursor, sql, *args: events.append(sql.split()[0].upper()),
    )
    trial, _ = loop._claim()
    assert trial is not None
    writes = [i for i, e in enumerate(events) if e in ("INSERT", "UPDATE", "DELETE")]
    assert len(writes) == (3 if beats else 2)  # the trial, its attribute, its heartbeat
    assert "COMMIT" not in events[writes[0] : writes[-1]]
    assert "SELECT" not in events[writes[-1] :]  # the new trial is not read back
    # The trial is the one Optuna's Trial(study, id) makes, reading it back.
    theirs = optuna.Trial(study, trial._trial_id)
    assert vars(trial) == vars(theirs)
    assert trial.number == 2 and trial._trial_id == backend.get_trial_id_from_study_id_trial_number(
        study._study_id, 2
    )
    x = trial.suggest_float("x", 0, 1)
    stored = backend.get_trial(trial._trial_id)
    assert stored.state == TrialState.RUNNING and stored.params == {"x": x}
    assert stored.user_attrs[worker.WORKER_ATTR].endswith(f":{__import__('os').getpid()}")
    assert stored.datetime_start is not None
    stale = backend._get_stale_trial_ids(study._study_id) if beats else []
    assert stale == []
    with backend.engine.connect() as connection:
        hearts = connection.execute(
            sqlalchemy.text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :t"),
            {"t": trial._trial_id},
        ).scalar()
    assert hearts == (1 if beats else 0)
    study.tell(trial, x)
    assert [t.number for t in study.get_trials()] == [0, 1, 2]
    assert study.get_trials()[2].value == x

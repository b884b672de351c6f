"""Workers: many processes, one study, one budget.

Every process that runs trials (``hpo study start``, ``hpo worker``, each of the K processes of
``hpo study start --workers K``) runs :func:`run_trials`, a loop much like ``Study.optimize`` with
three differences that matter when several processes share a study:

* **One budget.** The study file's ``trials`` is the total across all workers. Before each trial,
  under a cross-process lock (:func:`hpo.storage.study_lock`), the worker counts what the budget
  already holds (:func:`budget_usage`) and asks for a trial only if there is room: a 40-trial
  study run by 4 workers ends with 40 trials, not 160, and not 41.
* **Dead workers.** On RDB storages a running trial writes a heartbeat; a trial silent for the
  grace period is failed by the next worker that looks (:class:`StaleTrialHandler`): its MLflow
  run is closed as FAILED and the trial is queued again with the same parameters. A worker that
  finds the budget full but trials still running waits for them, so that someone is there to
  re-run a trial whose worker died.
* **Live trials keep their result.** Optuna's own heartbeat thread dies with the first failed
  write, so an outage longer than the grace period gets a live trial failed by another worker
  once the database is back. Here the heartbeat retries through outages, the objective trains
  on when its trial's writes are refused, and a result for a trial that was failed meanwhile is
  filed under that trial's queued retry (or a new trial with the same parameters): see
  :func:`recover_result`.

What counts against the budget: COMPLETE, PRUNED and RUNNING trials, and FAIL trials that were
not replaced. A failed trial is replaced when it was queued again (a heartbeat retry) or its
result was recovered: the replacement counts instead. Queued (WAITING) trials count once they
run.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import NotStarted, StorageError, StorageUnavailable
from hpo.gc_freeze import freeze_long_lived
from hpo.storage import rdb_backend, study_lock
from hpo.trial_writes import finish_trial, start_trial

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from hpo.forked import ForkedProcess
    from hpo.spec import HeartbeatSpec
    from hpo.tracking.runs import StudyTracker
    from hpo.trial_rows import TrialRows

#: Optuna's system attributes of a retried trial (``RetryHeartbeatStaleTrialCallback``'s names,
#: so ``retried_trial_number`` and ``retry_history`` work on our retries too).
FAILED_TRIAL_ATTR = "failed_trial"
RETRY_HISTORY_ATTR = "retry_history"
#: System attribute of a trial that holds the result of a live trial failed as stale.
RECOVERED_FROM_ATTR = "hpo.recovered_from"
#: System attribute of a trial claimed over the budget and given back unrun (FAIL), which counts
#: for nothing (:meth:`TrialLoop._give_back_over_budget`).
OVER_BUDGET_ATTR = "hpo.over_budget"
#: Trial user attribute naming the worker that ran it (``host:pid``).
WORKER_ATTR = "worker"
#: How long a worker keeps retrying the storage while it is unreachable before giving up.
STORAGE_OUTAGE_SECONDS = 600.0
#: How often a worker that waits for other workers' last trials looks at the study.
WAIT_POLL_SECONDS = 1.0
#: How often, at most, a worker looks for stale trials before a claim: a trial is stale only
#: after a grace period of seconds, and the query cost ~1 ms of every short trial.
STALE_CHECK_SECONDS = 1.0

TrialCallback = Callable[[optuna.Study, FrozenTrial], None]


class TrialObjective(Protocol):
    """What :func:`run_trials` needs of an objective (see :class:`hpo.objective.Objective`)."""

    #: The current trial's user attributes, and which of them the storage did not take.
    attrs: dict[str, Any]
    unsaved: set[str]

    def __call__(self, trial: optuna.Trial) -> float | list[float]: ...


# -- the budget --------------------------------------------------------------------------------
def budget_usage(study: optuna.Study, rows: TrialRows | None = None) -> tuple[int, int]:
    """``(used, running)``: trials that count against the budget, and how many of them run.

    Used: COMPLETE, PRUNED, RUNNING, and FAIL unless replaced by a retry or a recovered result
    (or given back unrun: :data:`OVER_BUDGET_ATTR`). ``rows``: a reader of the study's trials
    kept between calls (:mod:`hpo.trial_rows`: only what changed is read), else the study's
    trials are read.
    """
    trials: Sequence[Any] = rows.read() if rows is not None else study.get_trials(deepcopy=False)
    replaced: set[int] = set()
    for t in trials:
        replaced.update(t.system_attrs.get(RETRY_HISTORY_ATTR, ()))
        if RECOVERED_FROM_ATTR in t.system_attrs:
            replaced.add(int(t.system_attrs[RECOVERED_FROM_ATTR]))
    used = running = 0
    for t in trials:
        if t.system_attrs.get(OVER_BUDGET_ATTR):
            continue
        running += t.state == TrialState.RUNNING
        counted = t.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
        used += counted or (t.state == TrialState.FAIL and t.number not in replaced)
    return used, running


# -- dead workers ------------------------------------------------------------------------------
class StaleTrialHandler:
    """The storage's stale-trial callback: close the dead trial's run, queue the trial again.

    ``tracker`` may be set after the storage is created (the storage needs the callback first).
    Retries follow Optuna's ``RetryHeartbeatStaleTrialCallback`` (same system attributes), but
    start without the dead trial's user attributes: its run id and partial metrics belong to the
    run that was closed, not to the retry.
    """

    def __init__(self, heartbeat: HeartbeatSpec, tracker: StudyTracker | None = None) -> None:
        self.max_retries = heartbeat.max_retries
        self.grace = heartbeat.grace
        self.tracker = tracker

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from hpo.objective import RUN_ID_ATTR

        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if self.tracker is not None and run_id:
            try:
                close_stale_run(
                    self.tracker, run_id, f"worker died (no heartbeat for {self.grace}s)"
                )
            except Exception as exc:  # the retry matters more than the run's status
                _warn(f"could not close the run {run_id} of stale trial {trial.number}: {exc}")
        requeue(study, trial, self.max_retries)


def requeue(study: optuna.Study, trial: FrozenTrial, max_retries: int | None) -> bool:
    """Queue a failed trial again with the same parameters, as Optuna's
    ``RetryHeartbeatStaleTrialCallback`` does (same system attributes): the retry then counts
    against the budget instead of the failed trial. False when it was retried ``max_retries``
    times already (None: no limit)."""
    history = [*trial.system_attrs.get(RETRY_HISTORY_ATTR, ()), trial.number]
    if max_retries is not None and len(history) > max_retries:
        return False
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            system_attrs={
                **trial.system_attrs,
                FAILED_TRIAL_ATTR: trial.system_attrs.get(FAILED_TRIAL_ATTR, trial.number),
                RETRY_HISTORY_ATTR: history,
            },
        )
    )
    return True


def adopt_unbeaten_trials(study: optuna.Study) -> list[int]:
    """Give a first heartbeat to RUNNING trials that have none; return their numbers.

    Call it under the study lock, which every claim holds from ``ask`` to the trial's first
    heartbeat: a RUNNING trial without one seen there was left by a claim that failed half-way,
    and has no worker. From now on the grace period applies to it like to any dead worker's
    trial. (A live trial adopted by mistake loses nothing: its own heartbeats follow.) RDB
    storages only; others have no heartbeat and nothing is done.
    """
    import sqlalchemy

    backend = rdb_backend(study._storage)
    if backend is None:
        return []
    # Optuna's own schema (``trials``, ``trial_heartbeats``), as in hpo.study.last_trials.
    with backend.engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.text(
                "SELECT t.trial_id, t.number FROM trials t LEFT JOIN trial_heartbeats h "
                "ON h.trial_id = t.trial_id WHERE t.study_id = :study AND t.state = 'RUNNING' "
                "AND h.trial_id IS NULL"
            ),
            {"study": study._study_id},
        ).all()
    for trial_id, number in rows:
        backend.record_heartbeat(trial_id)
        _warn(
            f"trial {number} is RUNNING without a heartbeat (its claim failed half-way); it "
            "is failed and re-run unless its worker beats within the grace period"
        )
    return [number for _, number in rows]


def close_stale_run(tracker: StudyTracker, run_id: str, error: str) -> None:
    """End a stale trial's MLflow run as FAILED with ``error`` if it is still RUNNING.

    A run that already ended (its worker was alive after all and finished it) is left alone. The
    LoggedModel created with the run (PENDING: the trial never got to its model) is deleted.
    """
    from mlflow.entities import LoggedModelStatus

    from hpo.tracking.finisher import discard_model

    run = tracker.client.get_run(run_id)
    if run.info.status != "RUNNING":
        return
    tracker.log_to_run(run_id, tags={"hpo.state": "FAIL", "hpo.error": error})
    tracker._terminate(run_id, "FAILED")
    models = tracker.client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    for model in models:
        if model.status == LoggedModelStatus.PENDING:
            discard_model(tracker, model.model_id)


def mark_run_recovered(tracker: StudyTracker, run_id: str, old: int, new: FrozenTrial) -> None:
    """Point a recovered trial's run at the trial that now holds its result."""
    from hpo.tracking.runs import RUN_STATUS

    state = new.state.name
    tracker.log_to_run(
        run_id,
        tags={"hpo.trial": str(new.number), "hpo.state": state, RECOVERED_FROM_ATTR: str(old)},
    )
    run = tracker.client.get_run(run_id)
    if "hpo.error" in run.data.tags:
        tracker.client.delete_tag(run_id, "hpo.error")  # the "worker died" verdict was wrong
    tracker._terminate(run_id, RUN_STATUS[state])


class _Heartbeat:
    """A worker's heartbeat thread that, unlike Optuna's, survives failed writes (a database
    outage), and lives as long as the loop: one thread for all its trials, not one per trial
    (starting and joining one took 3 ms of each reference trial).

    A trial's first heartbeat is written when it is claimed (:meth:`TrialLoop._claim`); while
    :meth:`beating` for it, this beats every ``interval`` seconds, and after a failed write tries
    again every second, so the trial is alive in the storage again as soon as the database is
    back. Between trials it writes nothing.
    """

    def __init__(self, storage: BaseStorage, interval: int) -> None:
        self.storage = storage
        self.interval = interval
        self._trial_id: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def beating(self, trial_id: int) -> Iterator[None]:
        """Beat for ``trial_id`` until the block ends."""
        self._trial_id = trial_id
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hpo-heartbeat", daemon=True)
            self._thread.start()
        try:
            yield
        finally:
            self._trial_id = None

    def close(self) -> None:
        """Stop the thread (a write in progress ends first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        wait = float(self.interval)
        while not self._stop.wait(wait):
            wait = float(self.interval)
            trial_id = self._trial_id
            if trial_id is None:
                continue
            try:
                self.storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
            except Exception:
                wait = min(1.0, float(self.interval))


# -- the storage, through outages --------------------------------------------------------------
def _is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database did not answer (worth waiting for), not a mistake."""
    import sqlalchemy.exc

    return isinstance(
        exc,
        optuna.exceptions.StorageInternalError
        | sqlalchemy.exc.OperationalError
        | StorageUnavailable,  # hpo.storage's own (the study lock's connection)
    )


def _through_outage(what: str, fn: Callable[[], Any], limit: float = STORAGE_OUTAGE_SECONDS) -> Any:
    """Call ``fn``, retrying with back-off while the database is unreachable (up to ``limit``)."""
    start = time.monotonic()
    delay = 0.5
    warned = False
    while True:
        try:
            return fn()
        except Exception as exc:
            if not _is_outage(exc):
                raise
            if time.monotonic() - start > limit:
                raise StorageError(
                    f"storage: unreachable for {limit:.0f}s while {what}: {exc}"
                ) from None
            if not warned:
                _warn(f"storage unreachable while {what}; retrying ({type(exc).__name__})")
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _warn(message: str) -> None:
    print(f"hpo worker {os.getpid()}: {message}", file=sys.stderr, flush=True)


# -- a live trial's result ---------------------------------------------------------------------
def recover_result(
    study: optuna.Study,
    storage_url: str,
    failed: FrozenTrial,
    state: TrialState,
    values: Sequence[float] | None,
    attrs: dict[str, Any],
    intermediate_values: Mapping[int, float] | None = None,
) -> FrozenTrial:
    """File the result of a live trial that another worker failed as stale; return its trial.

    The result goes to the trial's queued retry if no worker has started it yet (so the budget
    stays exact), else to a new trial with the same parameters (the retry then runs as well: one
    trial more than the budget, the price of not losing a result). ``intermediate_values``: the
    trial's reported values (default: those the storage has of ``failed``).
    """
    reported = dict(
        failed.intermediate_values if intermediate_values is None else intermediate_values
    )
    storage = study._storage
    values = list(values) if state == TrialState.COMPLETE and values is not None else None
    with study_lock(storage_url, study.study_name):
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            history = t.system_attrs.get(RETRY_HISTORY_ATTR, [])
            # WAITING → RUNNING succeeds for one caller only: it claims the retry atomically.
            if (
                history
                and history[-1] == failed.number
                and storage.set_trial_state_values(t._trial_id, TrialState.RUNNING)
            ):
                for key, value in attrs.items():
                    storage.set_trial_user_attr(t._trial_id, key, value)
                storage.set_trial_system_attr(t._trial_id, RECOVERED_FROM_ATTR, failed.number)
                for step, value in reported.items():
                    storage.set_trial_intermediate_value(t._trial_id, step, value)
                storage.set_trial_state_values(t._trial_id, state, values)
                return storage.get_trial(t._trial_id)
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                values=values,
                params=failed.params,
                distributions=failed.distributions,
                user_attrs=attrs,
                system_attrs={RECOVERED_FROM_ATTR: failed.number},
                intermediate_values=reported,
            )
        )
        mine = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.system_attrs.get(RECOVERED_FROM_ATTR) == failed.number
        ]
        return mine[-1]


# -- the loop ----------------------------------------------------------------------------------
@contextmanager
def _as_in_optimize(study: optuna.Study) -> Iterator[None]:
    # Samplers end a study with study.stop() (the grid sampler once its grid is covered), which
    # Optuna allows only inside optimize(); ask() warns about the heartbeat outside it. This
    # loop is our optimize(): set the same two private flags optimize() sets.
    local = study._thread_local
    was = local.in_optimize_loop
    local.in_optimize_loop = True
    study._stop_flag = False
    try:
        yield
    finally:
        local.in_optimize_loop = was


@dataclass
class TrialLoop:
    """Runs trials of one study in this process until the budget, ``n_trials`` or time is up.

    ``budget``: the study's total (None: no limit, e.g. with ``n_trials``). ``heartbeat_interval``:
    None where the storage has no heartbeat; it also decides whether a worker waits for other
    workers' running trials once the budget is full (only a heartbeat can tell a dead one).
    """

    study: optuna.Study
    objective: TrialObjective
    storage_url: str
    budget: int | None
    n_trials: int | None = None
    timeout: float | None = None
    heartbeat_interval: int | None = None
    callbacks: Sequence[TrialCallback] = ()
    should_stop: Callable[[], bool] = lambda: False
    on_recovered: Callable[[FrozenTrial, FrozenTrial, dict[str, Any]], None] | None = None
    ran: int = 0
    #: The study's trials, read in SQL and only what changed (RDB storages: hpo.trial_rows);
    #: default: a reader of this loop's own.
    rows: TrialRows | None = field(default=None, repr=False)
    _heartbeat: _Heartbeat | None = field(default=None, init=False, repr=False)
    _stale_checked: float = field(default=-math.inf, init=False, repr=False)

    def __post_init__(self) -> None:
        from hpo.trial_rows import TrialRows

        if self.rows is None:
            self.rows = TrialRows.of(self.study)

    def run(self) -> int:
        """Run the loop; return how many trials this process ran."""
        start = time.monotonic()
        if self.heartbeat_interval is not None:
            self._heartbeat = _Heartbeat(self.study._storage, self.heartbeat_interval)
        try:
            with _as_in_optimize(self.study):
                self._run_trials(start)
        finally:
            if self._heartbeat is not None:
                self._heartbeat.close()
                self._heartbeat = None
        return self.ran

    def _run_trials(self, start: float) -> None:
        """Claim and run trials until the budget, ``n_trials``, the time or a stop."""
        while not self.should_stop() and not self.study._stop_flag:
            if self.timeout is not None and time.monotonic() - start >= self.timeout:
                break
            if self.n_trials is not None and self.ran >= self.n_trials:
                break
            if (
                self.heartbeat_interval is not None
                and time.monotonic() - self._stale_checked >= STALE_CHECK_SECONDS
            ):
                _through_outage("failing stale trials", self._fail_stale)
                self._stale_checked = time.monotonic()
            ready = getattr(self.objective, "ready", None)
            if ready is not None:
                ready()  # e.g. the tracking store, if it was seen away, answers again
            trial, running = _through_outage("asking for a trial", self._claim)
            if trial is None:
                if running and self.heartbeat_interval is not None:
                    time.sleep(WAIT_POLL_SECONDS)  # someone may die and need a retry
                    continue
                break
            frozen = self._run_one(trial)
            self.ran += 1
            # What the first trial imported is kept for life (once: hpo.gc_freeze).
            freeze_long_lived()
            if getattr(self.objective, "interrupted", False):
                raise KeyboardInterrupt  # after its result was recorded (hpo.objective)
            for callback in self.callbacks:  # they read the study: through outages too
                _through_outage(
                    f"taking in the result of trial {frozen.number}",
                    lambda c=callback, f=frozen: c(self.study, f),  # type: ignore[misc]
                )

    def _fail_stale(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fail_stale_trials is marked experimental
            optuna.storages.fail_stale_trials(self.study)

    def _claim(self) -> tuple[optuna.Trial | None, int]:
        """Under the study lock: a new trial if the budget has room, and how many run.

        With a heartbeat, the new trial's first heartbeat is written here, under the lock, before
        the trial runs: Optuna never fails a RUNNING trial that has no heartbeat, so a worker
        killed (or failing) between ``ask`` and its heartbeat thread would leave the trial
        RUNNING forever, counted against the budget and waited for by every other worker. A claim
        that still fails half-way (the process killed between the two writes, the connection lost
        after ``ask`` committed) leaves such a trial; the next claim, under the same lock, gives
        it a heartbeat (:func:`adopt_unbeaten_trials`), so the grace period fails and re-queues it.
        """
        storage = self.study._storage
        with study_lock(self.storage_url, self.study.study_name) as held:
            if self.heartbeat_interval is not None:
                adopt_unbeaten_trials(self.study)
            running = 0
            if self.budget is not None:
                used, running = budget_usage(self.study, self.rows)
                if used >= self.budget:
                    return None, running
            held.check()  # still ours: else another worker may be counting the same budget
            beats = self.heartbeat_interval is not None
            # Which process runs it: what to look for when a trial is failed as stale.
            name = f"{socket.gethostname()}:{os.getpid()}"
            # One transaction on SQLite and Postgres when no trial is queued.
            started = start_trial(self.study, {WORKER_ATTR: name}, heartbeat=beats)
            trial = started or self.study.ask()
            lost = held.lost()
            if started is None:
                _through_outage(
                    f"starting trial {trial.number}",
                    lambda: trial.set_user_attr(WORKER_ATTR, name),
                )
                if beats:
                    _through_outage(
                        f"starting trial {trial.number}",
                        lambda: storage.record_heartbeat(trial._trial_id),  # type: ignore[attr-defined]
                    )
        if lost and self._give_back_over_budget(trial):
            return self._claim()
        return trial, running

    def _give_back_over_budget(self, trial: optuna.Trial) -> bool:
        """After the study lock was lost while ``trial`` was being created (Postgres: its
        connection killed between :meth:`LockHeld.check` and ``ask``'s commit), another worker
        may have taken the lock, counted the budget without this trial and claimed one too.
        Under the lock again: if the study is now over its budget, this trial, which has not
        run, is given back (FAIL, :data:`OVER_BUDGET_ATTR`, counted for nothing) and True
        returned. Measured before: 7 trials for a budget of 6, once in 5 runs of
        ``test_workers_ride_out_killed_connections``."""
        if self.budget is None:
            return False
        storage = self.study._storage
        with study_lock(self.storage_url, self.study.study_name):
            used, _ = budget_usage(self.study, self.rows)
            if used <= self.budget:
                return False
            storage.set_trial_system_attr(trial._trial_id, OVER_BUDGET_ATTR, True)
            storage.set_trial_user_attr(
                trial._trial_id,
                "error",
                "claimed over the budget while the study lock was lost; given back, not run",
            )
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        _warn(f"trial {trial.number} was claimed over the budget (study lock lost); given back")
        return True

    def _run_one(self, trial: optuna.Trial) -> FrozenTrial:
        values: float | list[float] | None = None
        state = TrialState.FAIL
        beats = self._heartbeat.beating(trial._trial_id) if self._heartbeat else nullcontext()
        with beats:
            try:
                values = self.objective(trial)
                state = TrialState.COMPLETE
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except NotStarted:
                # Its run could not be created (the store stayed away; the trial may have
                # trained meanwhile, but has nowhere to log): the trial is queued again for
                # whichever worker runs next, and this one stops with the reason.
                frozen = self._finish(trial, TrialState.FAIL, None)
                requeue(self.study, frozen, max_retries=None)
                raise
            except Exception as exc:
                # The objective recorded the error on the trial and its run; the study goes on
                # (a streak of failures is stopped by the caller's guard).
                if _is_outage(exc):
                    _warn(f"trial {trial.number} failed: storage unreachable: {exc}")
            except KeyboardInterrupt:
                self._finish(trial, TrialState.FAIL, None)
                raise
        return self._finish(trial, state, values)

    def _finish(
        self, trial: optuna.Trial, state: TrialState, values: float | list[float] | None
    ) -> FrozenTrial:
        storage = self.study._storage
        listed = None if values is None else ([values] if isinstance(values, float) else values)

        def tell() -> FrozenTrial:
            # What the objective collected, in one transaction (hpo.trial_writes), which also
            # tells whether the trial still runs: another worker may have failed it as stale.
            reports = getattr(self.objective, "unsaved_reports", {})
            try:
                frozen = finish_trial(
                    self.study,
                    trial,
                    state,
                    listed,
                    user_attrs={k: self.objective.attrs[k] for k in sorted(self.objective.unsaved)},
                    intermediate_values=reports,
                )
                self.objective.unsaved.clear()
                reports.clear()
                return frozen
            except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
                # Finished meanwhile (tell refuses a finished trial with a ValueError).
                current = storage.get_trial(trial._trial_id)
                if not current.state.is_finished():
                    raise
            if current.state == TrialState.FAIL and state != TrialState.FAIL:
                new = recover_result(
                    self.study,
                    self.storage_url,
                    current,
                    state,
                    listed,
                    dict(self.objective.attrs),
                    # All of them: some were only on the trial object (hpo.trial_writes).
                    intermediate_values=trial._cached_frozen_trial.intermediate_values,
                )
                _warn(
                    f"trial {current.number} was failed as stale while it ran; its result is "
                    f"kept as trial {new.number}"
                )
                if self.on_recovered is not None:
                    self.on_recovered(current, new, dict(self.objective.attrs))
                return new
            return current

        frozen: FrozenTrial = _through_outage(f"recording trial {trial.number}", tell)
        return frozen


# -- local worker processes --------------------------------------------------------------------
#: Seconds after a Ctrl-C before the workers still running get a SIGINT from ``--workers``.
FORWARD_SIGINT_AFTER = 2.0


@dataclass
class WorkerProcess:
    """One ``hpo worker`` child process (a new interpreter, or forked: :mod:`hpo.forked`) and
    the file its stderr goes to."""

    process: subprocess.Popen[bytes] | ForkedProcess
    stderr: Any

    def tail(self, lines: int = 5) -> str:
        """The last lines the worker wrote to stderr."""
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])


def spawn_workers(
    k: int,
    file: str,
    *,
    storage_url: str,
    tracking_uri: str,
    study_name: str,
    timeout: float | None = None,
    force: bool = False,
    extra: Sequence[str] = (),
    shared_sender: bool = False,
    fork: bool = False,
) -> list[WorkerProcess]:
    """Start ``k`` ``hpo worker`` processes on the study of ``file``.

    Each takes a 1/k share of the cores (``--local-workers k``) and prints nothing but errors.
    ``shared_sender``: they leave their trials' runs in the spool for this process to send
    (``HPO_FINISHER=shared``: :class:`hpo.tracking.finisher.SpoolWatcher`). ``fork``: forked
    from this process where :func:`hpo.forked.fork_refused` allows it (the caller prepared for
    it: :mod:`hpo.forked`), else new interpreters.
    """
    from hpo.forked import fork_hpo, fork_refused, preload

    args = [
        "worker", file,
        "--storage", storage_url, "--tracking-uri", tracking_uri,
        "--study-name", study_name, "--local-workers", str(k), "--quiet",
    ]  # fmt: skip
    if timeout is not None:
        args += ["--timeout", str(timeout)]
    if force:
        args.append("--force")
    args += list(extra)
    from hpo.tracking.finisher import MODE_ENV, SHARED

    added = {MODE_ENV: SHARED} if shared_sender else {}
    if fork:
        preload()
        fork = fork_refused() is None
    workers = []
    for _ in range(k):
        err = tempfile.TemporaryFile()  # noqa: SIM115 - outlives this function, see tail()
        proc: subprocess.Popen[bytes] | ForkedProcess
        if fork:
            with open(os.devnull, "wb") as devnull:
                proc = fork_hpo(args, stdout=devnull.fileno(), stderr=err.fileno(), env=added)
        else:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hpo", *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, **added} if added else None,
            )
        workers.append(WorkerProcess(proc, err))
    return workers


def stop_workers(workers: Sequence[WorkerProcess], grace: float = 10.0) -> None:
    """Terminate the workers still running and wait for them (killed after ``grace`` s)."""
    for w in workers:
        if w.process.poll() is None:
            w.process.terminate()
    _wait_all(workers, grace)
    for w in workers:
        if w.process.poll() is None:
            w.process.kill()
            w.process.wait()


def wait_for_workers(
    workers: Sequence[WorkerProcess],
    poll: Callable[[], None] | None = None,
    every: float = 1.0,
) -> list[WorkerProcess]:
    """Wait until every worker exits, calling ``poll`` every ``every`` seconds; return the failed.

    Ctrl-C reaches the workers too (same process group). Workers still running
    :data:`FORWARD_SIGINT_AFTER` s later (the SIGINT was sent to this process alone) get one from
    here; on a second Ctrl-C, or when they do not stop within 30 s, they are terminated. A
    worker's exit is seen within milliseconds, not at the next ``poll``: the study's end (its
    report) waits for the last one.
    """
    try:
        next_poll = time.monotonic()
        while running := [w for w in workers if w.process.poll() is None]:
            if time.monotonic() >= next_poll:
                if poll is not None:
                    poll()
                next_poll = time.monotonic() + every
            with suppress(subprocess.TimeoutExpired):
                running[0].process.wait(max(0.01, next_poll - time.monotonic()))
    except KeyboardInterrupt:
        # Not at once: a worker that got the terminal's Ctrl-C is recording its interrupted
        # trial and run, and a second SIGINT would cut that short (measured with forked
        # workers: a trial or its run left RUNNING in 6 of 9 tries, 0 of 8 with this wait).
        try:
            _wait_all(workers, FORWARD_SIGINT_AFTER)
            for w in workers:
                if w.process.poll() is None:
                    w.process.send_signal(signal.SIGINT)
            _wait_all(workers, 30)
        except KeyboardInterrupt:
            pass
        for w in workers:
            if w.process.poll() is None:
                w.process.terminate()
        raise
    if poll is not None:
        poll()
    return [w for w in workers if w.process.returncode != 0]


def _wait_all(workers: Sequence[WorkerProcess], seconds: float) -> None:
    """Wait up to ``seconds`` for every worker to exit."""
    deadline = time.monotonic() + seconds
    for w in workers:
        with suppress(subprocess.TimeoutExpired):
            w.process.wait(max(0.01, deadline - time.monotonic()))

"""Sending spooled jobs (:mod:`hpo.tracking.spool`): the end of each trial's run, off the trial's
critical path, exactly once, through outages of the tracking store.

:func:`send` does one job in steps (metrics, plots, model, end of the run), recording each step
done in the job's progress file, so a job sent again (after a crash, an outage, Ctrl-C) skips
what its run already has. A step whose last attempt failed *ambiguously* (the store may have
applied it; see :mod:`hpo.tracking.outage`) is checked against the run before it is repeated:
metric points are compared with the run's histories, the model with its LoggedModel's status.
Plots are uploaded again (same names: they replace themselves).

:class:`Finisher` is what a worker uses. It sends in the trial's own thread (inline), or from a
background process (``python -m hpo.tracking.finisher``) that sends while the next trial trains:
the default when trials train on a GPU, whose worker's CPU is otherwise idle
(:func:`background_default`; ``HPO_FINISHER`` chooses). The background process reports each job
back on its stdout, as one JSON line; the worker reads them between trials and at the end
(:meth:`Finisher.drain`), when it waits for what is still in flight.

A job that cannot be sent because the store is away waits up to ``outage_seconds`` (counted from
the start of the outage, not per job), then stays in the spool: the next worker started on this
machine, or ``hpo sync NAME``, sends it. A job that fails for good (a 4xx answer, a full or
read-only disk under a local store) ends its run FAILED with the reason in ``hpo.error``; the
trial's result in Optuna is kept either way, and the job stays in the spool for ``hpo sync``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hpo.tracking import spool
from hpo.tracking.outage import Backoff, OutageTooLong, single_attempt

if TYPE_CHECKING:
    from torch import nn

    from hpo.tracking.runs import StudyTracker

#: How long a job waits for a tracking store that is away before it is left in the spool.
OUTAGE_SECONDS = 300.0
#: Environment variable that overrides :data:`OUTAGE_SECONDS` (tests, impatient users).
OUTAGE_ENV = "HPO_TRACKING_OUTAGE_SECONDS"
#: A store that fails for less than this (a 503 or a dropped connection now and then) is
#: retried without a word; a longer outage is said once.
QUIET_SECONDS = 3.0
#: How a job that waits for the store says so (:attr:`Sent.error`).
UNREACHABLE = "tracking store unreachable"
#: ``HPO_FINISHER=inline`` sends jobs in the trial's own thread (no background process),
#: ``background`` from a background process; unset: see :func:`background_default`.
#: ``shared``: the worker only spools its jobs; the process that started it sends them
#: (``hpo study start --workers N`` sets it for its workers: :class:`SpoolWatcher`).
MODE_ENV = "HPO_FINISHER"
SHARED = "shared"
#: How often a :class:`SpoolWatcher` looks for new jobs (seconds).
WATCH_SECONDS = 0.05


def background_default(device: str = "cpu", spare_cores: int = 0) -> bool:
    """Whether a worker sends its runs from a background process: ``$HPO_FINISHER``
    (``background`` or ``inline``) if set, else when training leaves a core idle: its trials
    train on an accelerator, or use fewer CPU threads than there are cores (``spare_cores``,
    :func:`hpo.training.threads.spare_cores`).

    When training takes every core (one worker's default: :func:`hpo.training.threads.
    default_threads`), a background sender only takes turns with it and costs a process (~300
    MB, seconds of imports): ``studies/quickstart.yaml`` (20 trials, 2 threads on 2 cores) took
    16.4 s sending in the trial's thread and 20.4 s from a background process (2026-11-30, two
    runs each). With a core to spare it sends while the next trial trains: the reference trial
    of ``benchmarks/overhead.py`` (1 thread on 2 cores) took 0.29 s per trial until its run was
    sent against 0.38 s inline.
    """
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode in ("background", "inline"):
        return mode == "background"
    return device.split(":", 1)[0] != "cpu" or spare_cores > 0


def shared_default() -> bool:
    """Whether this worker's runs are sent by the process that started it
    (``HPO_FINISHER=shared``)."""
    return os.environ.get(MODE_ENV, "").strip().lower() == SHARED


def outage_seconds() -> float:
    """:data:`OUTAGE_SECONDS`, or ``$HPO_TRACKING_OUTAGE_SECONDS``."""
    try:
        return float(os.environ.get(OUTAGE_ENV) or OUTAGE_SECONDS)
    except ValueError:
        return OUTAGE_SECONDS


@dataclass
class Sent:
    """What became of one job."""

    path: str
    study: str
    trial: int
    run_id: str
    state: str
    ok: bool
    #: Why not (None when ok).
    error: str | None = None
    #: The job stays in the spool (to be sent later): the store was away, or it failed for good.
    kept: bool = False


# -- one job -------------------------------------------------------------------------------------
def send(
    path: Path,
    tracker: StudyTracker,
    backoff: Backoff,
    on_wait: Callable[[BaseException, float], None] | None = None,
) -> Sent | None:
    """Send the job at ``path`` to ``tracker``'s store; None if another process is sending it."""
    with spool.locked(path) as mine:
        if not mine:
            return None
        job = spool.read_job(path)
        result = Sent(str(path), job.study, job.trial, job.run_id, job.state, ok=False)
        store = _mask(tracker.tracking_uri)
        if job.tracking_uri and job.tracking_uri != store:
            result.error = f"its run is in {job.tracking_uri}, not {store}"
            result.kept = True
            return result
        try:
            _Sender(job, tracker, backoff, on_wait).run()
        except OutageTooLong as exc:
            result.error = f"{UNREACHABLE}: {_first_line(exc)}"
            result.kept = True
            return result
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {_first_line(exc)}"
            result.kept = True
            _mark_failed(job, tracker, result.error)
            progress = spool.read_progress(path)
            spool.write_progress(path, {**progress, "failed": result.error})
            return result
        result.ok = True
    spool.remove_job(path)
    return result


def _mask(uri: str) -> str:
    from hpo.storage import mask_url

    return mask_url(uri)


def _first_line(exc: BaseException) -> str:
    from hpo.tracking.runs import _first_line as first

    cause = exc.__cause__ if isinstance(exc, OutageTooLong) and exc.__cause__ else exc
    return first(cause)


def _mark_failed(job: spool.Job, tracker: StudyTracker, error: str) -> None:
    """A job that failed for good: its run ends FAILED and says why (if the store takes that)."""
    with contextlib.suppress(Exception):
        reason = f"could not log the end of the trial's run: {error}"
        tracker.log_to_run(job.run_id, tags={"hpo.state": "FAIL", "hpo.error": reason[:5000]})
        tracker._terminate(job.run_id, "FAILED")
        if job.model is not None and job.model.model_id:
            from mlflow.entities import LoggedModelStatus

            tracker.client.finalize_logged_model(job.model.model_id, LoggedModelStatus.FAILED)


class _Sender:
    """The steps of one job, each done once (see the module docstring)."""

    STEPS = ("metrics", "plots", "model", "end")

    def __init__(
        self,
        job: spool.Job,
        tracker: StudyTracker,
        backoff: Backoff,
        on_wait: Callable[[BaseException, float], None] | None,
    ) -> None:
        from hpo.tracking.runs import TrialRun

        assert job.path is not None
        self.job = job
        self.path = job.path
        self.tracker = tracker
        self.backoff = backoff
        self.on_wait = on_wait
        self.progress = spool.read_progress(self.path)
        #: Steps an earlier attempt started: whether they got through is unknown. Not those this
        #: attempt marks started ahead (see run()): checking them cost two store reads per run
        #: (the model's status, the run's outputs), two requests to a tracking server.
        self._started_before = frozenset(self.progress.get("started", []))
        self.run_ = TrialRun(tracker, job.run_id, job.trial)
        self.run_.artifact_uri = job.artifact_uri
        self._module: nn.Module | None = None

    def run(self) -> None:
        todo = [step for step in self.STEPS if step not in self.progress["done"]]
        for i, step in enumerate(todo):
            # Started by an earlier attempt and not done: that attempt's fate is unknown.
            unsure = step in self._started_before
            if self._add("started", step):
                spool.write_progress(self.path, self.progress)
            getattr(self, f"_send_{step}")(unsure)
            self._add("done", step)
            # The next step counts as started with this one's end: one write per step, not
            # two (a crash in between only makes the next attempt check that step first).
            if i + 1 < len(todo):
                self._add("started", todo[i + 1])
            spool.write_progress(self.path, self.progress)

    def _add(self, kind: str, step: str) -> bool:
        """Note ``step`` as ``kind`` (not written yet); False if it was already."""
        steps = self.progress.setdefault(kind, [])
        if step in steps:
            return False
        steps.append(step)
        return True

    def _call(self, fn: Callable[[], Any], check: Callable[[], Any] | None = None) -> Any:
        with single_attempt():
            return self.backoff.call(fn, check=check, on_wait=self.on_wait)

    # -- steps ----------------------------------------------------------------------------------
    def _send_metrics(self, unsure: bool) -> None:
        # Sent again as they are (same timestamps): MLflow's stores key a metric point by (run,
        # key, step, timestamp, value), so a batch that arrives twice is stored once.
        # The run's params too, if the trial ended before its first write (a parameter logged
        # again with the same value is accepted). When the model's LoggedModel exists, the
        # points at its step go linked to it (what linking the model writes again otherwise:
        # one store call less per run).
        # The run's end tags (hpo.state, …) too: the trial has ended; only the run's status
        # waits for the plots and the model (the end step), one store call less per run.
        from mlflow.entities import RunTag

        from hpo.tracking.runs import _params, end_tags

        tags = [
            RunTag(k, v) for k, v in end_tags(self.job.state, self.job.error, self.job.tags).items()
        ]
        rows, params = self.job.metrics, self.job.params
        m = self.job.model
        linked: list[Any] = []
        if m is not None and m.model_id is not None and m.step_metrics is not None:
            at_step = [r for r in m.step_metrics if int(r[2]) == m.step]
            keys = {_row_key(r) for r in at_step}
            rows = [r for r in rows if _row_key(r) not in keys]
            linked = spool.row_metrics(at_step, run_id=self.job.run_id, model_id=m.model_id)
        self._call(
            lambda: self.tracker._log_batch(
                self.job.run_id,
                metrics=spool.row_metrics(rows) + linked,
                params=_params(params),
                tags=tags,
            )
        )
        # Recorded with the step (written with its end, in run()).
        self.progress["end_tags"] = True
        if linked:
            self.progress["metrics_linked"] = True

    def _send_plots(self, unsure: bool) -> None:
        p = self.job.plots
        if p is None:
            return
        self._call(
            lambda: self.run_.log_plots(
                p.y_true,
                p.proba,
                p.classes,
                p.history,
                prediction_counts=p.prediction_counts,
                boundary=p.boundary,
                feature_names=p.feature_names,
                predict_proba=self._predict_proba if p.boundary is not None else None,
            )
        )

    def _send_model(self, unsure: bool) -> None:
        m = self.job.model
        if m is None:
            return
        if m.model_id is None:
            # The store was away when the trial ended: create the LoggedModel now, once (its id
            # is kept with the job, so a retry of this step uses it too).
            m.model_id = self.progress.get("model_id") or self._call(
                lambda: self.run_.create_model(m.params, m.tags)
            )
            m.artifact_location = self.run_.model_locations.get(m.model_id)
            self.progress["model_id"] = m.model_id
            spool.write_progress(self.path, self.progress)
        model_id = m.model_id
        if unsure and self._model_ready(model_id):
            return
        module = self._rebuilt()
        attempts = 0

        def log() -> str:
            nonlocal attempts
            attempts += 1
            # MLflow links the model to the run first; a repeat of that link is refused, so an
            # attempt after one that may have got that far links only if the run lacks it.
            link = not (unsure or attempts > 1) or not self._linked(model_id)
            return self.run_.log_model(
                module,
                m.example,
                m.metadata,
                model_id=model_id,
                params=m.params,
                tags=m.tags,
                step=m.step,
                link=link,
                # Linked with the run's metrics already: only the run's output is left.
                step_metrics=[] if self.progress.get("metrics_linked") else m.step_metrics,
                location=m.artifact_location,
            )

        def check() -> str | None:
            return f"models:/{model_id}" if self._model_ready(model_id) else None

        self._call(log, check)

    def _linked(self, model_id: str) -> bool:
        outputs = self.tracker.client.get_run(self.job.run_id).outputs
        return any(o.model_id == model_id for o in (outputs.model_outputs if outputs else []))

    def _model_ready(self, model_id: str) -> bool:
        from mlflow.entities import LoggedModelStatus

        status = self.tracker.client.get_logged_model(model_id).status
        return bool(status == LoggedModelStatus.READY)

    def _send_end(self, unsure: bool) -> None:
        job = self.job
        # An earlier attempt that failed for good marked the run FAILED: its tags are written
        # again then.
        if self.progress.get("end_tags") and not self.progress.get("failed"):
            from hpo.tracking.runs import RUN_STATUS

            self._call(lambda: self.tracker._terminate(job.run_id, RUN_STATUS[job.state]))
        else:  # a job whose first step came before its end tags did
            self._call(lambda: self.run_.close(job.state, job.error, tags=job.tags))
        if self.progress.get("failed") and job.state != "FAIL":
            # An earlier attempt marked the run FAILED: that verdict no longer holds.
            with contextlib.suppress(Exception):
                self.tracker.client.delete_tag(job.run_id, "hpo.error")
        if job.discard_model:
            self._call(lambda: discard_model(self.tracker, job.discard_model or ""))

    # -- the trained model ----------------------------------------------------------------------
    def _rebuilt(self) -> nn.Module:
        """The trial's model, rebuilt from its family and loaded with its trained weights."""
        if self._module is None:
            from hpo.models import FAMILIES

            m = self.job.model
            assert m is not None
            family = FAMILIES.get(m.family)()
            module = family.build(
                family.Params(**m.family_params), tuple(m.input_shape), m.n_classes
            )
            module.load_state_dict(m.state_dict)
            module.eval()
            self._module = module
        return self._module

    def _predict_proba(self, X: Any) -> Any:
        import torch

        from hpo.training.loop import predict_proba

        return predict_proba(self._rebuilt(), X, torch.device("cpu"))


def discard_model(tracker: StudyTracker, model_id: str) -> None:
    """Delete a LoggedModel that never got its model (a pruned or failed trial's, created with
    its run); one already deleted (an attempt that got that far) is left as it is."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    from hpo.tracking.runs import _tracking_errors

    with _tracking_errors(f"deleting model {model_id}", tracker.tracking_uri):
        try:
            tracker.client.delete_logged_model(model_id)
        except MlflowException as exc:
            if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise


def _row_key(row: Sequence[Any]) -> tuple[str, str, int, int]:
    """A metric row's identity (its value as text: NaN equals NaN here)."""
    key, value, step, timestamp = row
    return str(key), repr(float(value)), int(step), int(timestamp)


# -- the worker's side ---------------------------------------------------------------------------
class Finisher:
    """Sends a study's jobs: in the calling thread, or from a background process.

    ``submit`` hands a spooled job over; ``poll`` returns what was sent since the last call (and
    prints the sender's warnings); ``drain`` waits for everything submitted. The background
    process starts on first use (:meth:`start` starts it early, so its imports overlap with the
    first trial) and is restarted once if it dies; it ignores Ctrl-C (the worker decides when
    to stop waiting for it: :meth:`drain`), and finishes what it was given if the worker is
    killed.
    """

    def __init__(
        self,
        tracker: StudyTracker,
        *,
        background: bool | None = None,
        outage: float | None = None,
        warn: Callable[[str], None] | None = None,
        shared: bool | None = None,
    ) -> None:
        """``shared`` (default: ``HPO_FINISHER=shared``): jobs are only left in the spool, for
        the process that started this one to send (:class:`SpoolWatcher`)."""
        self.tracker = tracker
        self.shared = shared_default() if shared is None else shared
        # None: HPO_FINISHER, else in this thread (no device known here; see background_default)
        self.background = background_default() if background is None else background
        if self.shared:
            self.background = False
        # Who sends a shared worker's jobs: the process that started it, while it lives.
        self._parent = os.getppid()
        self.outage = outage_seconds() if outage is None else outage
        self.warn = warn or _stderr
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._results: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._pending: dict[str, int] = {}  # job path → times submitted
        self._restarted = False
        self._inline_outage = _OutageClock(self.outage)
        self._done: list[Sent] = []

    # -- the background process -----------------------------------------------------------------
    def start(self) -> None:
        """Start the background process now (no-op inline, shared or when running)."""
        if not self.background or (self._proc is not None and self._proc.poll() is None):
            return
        env = {**os.environ, OUTAGE_ENV: str(self.outage)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "hpo.tracking.finisher"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            # Its own process group: a Ctrl-C in the terminal goes to the worker, which then
            # decides how long to wait for the jobs in flight.
            start_new_session=True,
        )
        header = {"tracking_uri": self.tracker.tracking_uri, "study": self.tracker.study_name}
        self._write(json.dumps(header))
        self._reader = threading.Thread(
            target=_read_lines, args=(self._proc.stdout, self._results), daemon=True
        )
        self._reader.start()

    def _write(self, line: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(line.encode() + b"\n")
        self._proc.stdin.flush()

    def submit(self, path: Path) -> Sent | None:
        """Send the job at ``path``: handed to the background process, or sent now (inline,
        returning what became of it); shared: left in the spool (returns None)."""
        if self.shared:
            self._orphaned()  # if so, it sent this job with the others it left
            return None
        if not self.background:
            sent = self._send_inline(path)
            if sent is not None:
                self._done.append(sent)
            return sent
        self._pending[str(path)] = self._pending.get(str(path), 0) + 1
        if self._proc is not None and self._proc.poll() is not None:
            self._revive()  # it died: a new one gets every unsent job, this one included
            return None
        try:
            self.start()
            self._write(str(path))
        except (BrokenPipeError, OSError):
            self._revive()
        return None

    def _orphaned(self) -> None:
        """A shared worker whose study process is gone (killed): from now on it sends its
        runs itself, the ones it left in the spool first."""
        if not self.shared or os.getppid() == self._parent:
            return
        self.shared = False
        self.warn(
            "the process that started this worker is gone: it sends its trial runs itself now"
        )
        for path in spool.list_jobs(self.tracker.study_name):
            self.submit(path)

    def _send_inline(self, path: Path) -> Sent | None:
        sent = self._inline_outage.send(path, self.tracker, self.warn)
        self._note(sent)
        return None if sent.kept and sent.error is None else sent

    def _note(self, sent: Sent | None) -> None:
        if sent is None or not sent.error:
            return
        self.warn(_describe_failure(sent))
        if _unreachable(sent):
            self.tracker.note_unreachable()

    def _revive(self) -> None:
        """The background process died: start a new one once and give it the unsent jobs;
        after that, send them inline."""
        proc = self._proc
        code = proc.poll() if proc is not None else None
        self._proc = None
        if not self._restarted:
            self._restarted = True
            self.warn(f"the background sender exited (code {code}); starting a new one")
            try:
                self.start()
                for path in list(self._pending):
                    self._write(path)
                return
            except OSError:
                self._proc = None
        self.warn("sending the remaining trial runs from this process")
        self.background = False
        for path in list(self._pending):
            self._pending.pop(path, None)
            self.submit(Path(path))

    def poll(self) -> list[Sent]:
        """What was sent since the last call (not waiting)."""
        while True:
            try:
                message = self._results.get_nowait()
            except queue.Empty:
                break
            if message is None:  # the process's stdout closed
                if self._pending:
                    self._revive()
                continue
            self._handle(message)
        done, self._done = self._done, []
        return done

    def _handle(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event == "warning":
            self.warn(str(message.get("message")))
        elif event == "sent":
            sent = Sent(**message["sent"])
            self._pending.pop(sent.path, None)
            self._note(sent)
            self._done.append(sent)

    @property
    def in_flight(self) -> int:
        """Jobs submitted to the background process and not reported back yet."""
        return len(self._pending)

    def wait(self, timeout: float | None = None) -> list[Sent]:
        """Wait (at most ``timeout`` seconds) until every submitted job was reported back,
        keeping the background process; return what was sent meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self.poll()
        while self._pending and self._proc is not None and self._proc.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                message = self._results.get(timeout=0.05)
            except queue.Empty:
                continue
            if message is not None:
                self._handle(message)
            done += self.poll()
        return done

    def drain(self) -> list[Sent]:
        """Wait until every submitted job was sent (or given up on); stop the process; remove
        the study's spool directory if nothing is left in it.

        Ctrl-C stops the wait: the background process is stopped, and the jobs it had not sent
        stay in the spool (``hpo sync``).
        """
        self._orphaned()
        proc = self._proc
        if proc is None:
            done = self.poll()
            spool.remove_empty(self.tracker.study_name)
            return done
        try:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            while self._pending and proc.poll() is None:
                try:
                    message = self._results.get(timeout=0.2)
                except queue.Empty:
                    continue
                if message is not None:
                    self._handle(message)
            proc.wait()
            if self._reader is not None:
                self._reader.join(timeout=5)
        except KeyboardInterrupt:
            self.stop()
            raise
        finally:
            self._proc = None
        done = self.poll()
        if self._pending:  # it exited without reporting some
            self.warn(
                f"{len(self._pending)} trial runs were not sent; `hpo sync "
                f"{self.tracker.study_name}` sends them"
            )
            self._pending.clear()
        spool.remove_empty(self.tracker.study_name)
        return done

    def stop(self) -> None:
        """Stop the background process at once (its unsent jobs stay in the spool)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


class SpoolWatcher:
    """Sends the runs that a study's local workers (``HPO_FINISHER=shared``) leave in this
    machine's spool, from a thread of the process that started them (``hpo study start
    --workers N``), through ``finisher``; ``on_sent`` gets what was sent (the champion moves
    there).

    One sender for every local worker: the seconds of warming up ``torch.export`` are paid
    once, while the workers import and load their data, and the traces it keeps
    (:mod:`hpo.tracking.pt2_cache`) serve every worker's trials. Each worker sending its own runs
    paid both per worker, inside its first trial.
    """

    def __init__(
        self,
        finisher: Finisher,
        on_sent: Callable[[list[Sent]], None] | None = None,
        every: float = WATCH_SECONDS,
    ) -> None:
        self.finisher = finisher
        self.on_sent = on_sent
        self.every = every
        self._submitted: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hpo-spool-watcher", daemon=True)
        self._failed = False

    def start(self) -> None:
        """Warm up and watch, in the background."""
        self.finisher.start()
        self._thread.start()

    def _run(self) -> None:
        if not self.finisher.background:  # else its background process warms up
            _warm_up(self.finisher.warn)
        while not self._stop.wait(self.every):
            self.scan()

    def scan(self) -> None:
        """Send the jobs that appeared since the last scan; hand on what was sent."""
        try:
            for path in spool.list_jobs(self.finisher.tracker.study_name):
                if str(path) not in self._submitted:
                    self._submitted.add(str(path))
                    self.finisher.submit(path)
            sent = self.finisher.poll()
            if sent and self.on_sent is not None:
                self.on_sent(sent)
        except Exception as exc:  # keep watching: a job that fails is the sender's to report
            if not self._failed:
                self._failed = True
                self.finisher.warn(f"sending the workers' runs: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Stop watching, send what is left, wait for every job (the study's end needs its
        runs)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.scan()
        sent = self.finisher.drain()
        if sent and self.on_sent is not None:
            self.on_sent(sent)


def _unreachable(sent: Sent) -> bool:
    return bool(sent.kept and sent.error and sent.error.startswith(UNREACHABLE))


def _describe_failure(sent: Sent) -> str:
    where = f"trial {sent.trial} (run {sent.run_id})"
    if _unreachable(sent):
        return (
            f"{where}: {sent.error}; its run waits in the spool, `hpo sync {sent.study}` "
            "sends it; the trial's result is saved"
        )
    return f"{where}: {sent.error}; the run is marked FAILED, the trial's result is saved"


def _stderr(message: str) -> None:
    print(f"hpo: {message}", file=sys.stderr, flush=True)


def _read_lines(stream: IO[bytes] | None, out: queue.Queue[dict[str, Any] | None]) -> None:
    if stream is not None:
        for raw in stream:
            with contextlib.suppress(ValueError):
                out.put(json.loads(raw))
    out.put(None)


class _OutageClock:
    """One outage for all jobs: once the store has been away for ``limit`` seconds, the next
    jobs try once each instead of waiting ``limit`` again; a job that gets through ends it."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.since: float | None = None
        self._warned = False

    def remaining(self) -> float:
        if self.since is None:
            return self.limit
        return max(0.0, self.limit - (time.monotonic() - self.since))

    def waiting(self, warn: Callable[[str], None]) -> Callable[[BaseException, float], None]:
        def on_wait(exc: BaseException, waited: float) -> None:
            if self.since is None:
                self.since = time.monotonic() - waited
            if not self._warned and waited >= QUIET_SECONDS:
                self._warned = True
                warn(
                    f"the tracking store does not answer ({_first_line(exc)}); retrying for up "
                    f"to {self.remaining():.0f} s, the trial runs wait in the spool meanwhile"
                )

        return on_wait

    def send(self, path: Path, tracker: StudyTracker, warn: Callable[[str], None]) -> Sent:
        """:func:`send` within this outage's limit; a job that cannot be read, or that another
        process is sending, comes back ``kept`` (with the reason, or none)."""
        try:
            sent = send(path, tracker, Backoff(limit=self.remaining()), self.waiting(warn))
        except Exception as exc:  # an unreadable job must not stop the others
            sent = Sent(str(path), tracker.study_name, -1, "", "", ok=False, kept=True)
            sent.error = f"{type(exc).__name__}: {exc}"
        if sent is None:  # another process holds it
            return Sent(str(path), tracker.study_name, -1, "", "", ok=False, kept=True)
        if sent.ok:
            self.since, self._warned = None, False
        return sent


def sync_spool(study_name: str, tracker: StudyTracker, *, outage: float = 30.0) -> list[Sent]:
    """Send every job of ``study_name`` waiting in this machine's spool, in this thread
    (``hpo sync``); a store that is away is waited for up to ``outage`` seconds in all."""
    finisher = Finisher(tracker, background=False, outage=outage)
    sent = [finisher.submit(path) for path in spool.list_jobs(study_name)]
    spool.remove_empty(study_name)
    return [s for s in sent if s is not None]


def _warm_up(warn: Callable[[str], None]) -> None:
    """:func:`hpo.tracking.pt2_cache.warm_up`, a failure said with ``warn`` (a warm-up is never
    worth a job: the first model will tell)."""
    from hpo.tracking import pt2_cache

    try:
        pt2_cache.warm_up()
    except Exception as exc:
        warn(f"could not warm up the model export: {exc}")


# -- the background process ----------------------------------------------------------------------
def serve(lines: Iterator[str], emit: Callable[[dict[str, Any]], None]) -> None:
    """The background process's loop: a JSON header line, then one job path per line."""
    from hpo.gc_freeze import freeze_long_lived
    from hpo.tracking.runs import StudyTracker

    header = json.loads(next(lines))
    tracker = StudyTracker(header["tracking_uri"], header["study"])
    clock = _OutageClock(outage_seconds())

    def warn(message: str) -> None:
        emit({"event": "warning", "message": message})

    _warm_up(warn)  # while the first trial trains: its job would otherwise pay these seconds
    for line in lines:
        if line.strip():
            sent = clock.send(Path(line.strip()), tracker, warn)
            emit({"event": "sent", "sent": asdict(sent)})
            # What the first run's sending imported is kept for life (once: hpo.gc_freeze).
            freeze_long_lived()


def main() -> None:
    """``python -m hpo.tracking.finisher``: see :class:`Finisher`."""
    import torch

    from hpo.cli import _quiet_libraries

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _quiet_libraries()  # the same quiet as the hpo command that started it

    # One core's worth: the trial that trains meanwhile needs the others.
    torch.set_num_threads(1)
    out = sys.stdout
    # Anything a library prints must not corrupt the JSON lines.
    sys.stdout = sys.stderr

    def emit(message: dict[str, Any]) -> None:
        out.write(json.dumps(message, default=str) + "\n")
        out.flush()

    serve((line for line in sys.stdin), emit)


if __name__ == "__main__":
    main()
    from hpo.quick_exit import exit_now

    exit_now(0)  # the worker waits for this process to end: skip the 2 s of teardown

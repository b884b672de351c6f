"""What a study looks like in MLflow: one experiment, one parent run, one child run per trial.

* The experiment is named after the study; the parent run too (``mlflow.runName``). Every process
  working on the study nests its trial runs under that one parent (its id lives in the Optuna
  study's user attributes, see ``hpo/study.py``).
* A trial's run is named ``trial-0007`` and tagged ``hpo.study``, ``hpo.trial``, ``hpo.state``.
  It holds every parameter, the per-epoch curves (step = epoch), the final metrics, its PNG
  plots (:meth:`TrialRun.log_plots`) and the model (``pt2``). Its status mirrors the trial:
  COMPLETE → FINISHED, PRUNED → KILLED, FAIL → FAILED with the error in the ``hpo.error`` tag.

Everything goes through one :class:`~mlflow.tracking.MlflowClient` per tracker, never the fluent
``mlflow.*`` run state: that state is process-global, so two trackers (or Optuna's worker
threads) would log into each other's runs. Only ``log_model`` needs the fluent machinery; see
``hpo/tracking/models.py`` for how it is confined.

Cost of one trial's logging, measured on a local SQLite store (2 CPU cores, 10 trials after a
warm-up, median of ``time.perf_counter`` around each call; 25 params, 15 epochs of 4 metrics,
9 final metrics, 3 plots of a 10-class problem, a 64-64-10 MLP): 0.42-0.44 s, of which the plots
0.30 s, the model 0.09 s, everything else (create the run and its params, epochs, finals, end,
the parent's summary) 0.03 s. The first trial of a process pays ~3 s once more (importing
scikit-learn's metrics, warming up ``torch.export``). Two choices keep the store's share small:
SQLite in WAL mode (:func:`_tune_sqlite`; without it the same trial costs 0.67 s) and buffered
epoch metrics (:data:`EPOCH_FLUSH_SECONDS`).
"""

from __future__ import annotations

import math
import os
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hpo.errors import HpoError, NotStarted, TrackingError

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    from matplotlib.figure import Figure
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    from torch import nn

    from hpo.data.base import Dataset
    from hpo.tracking.finisher import Finisher, Sent
    from hpo.tracking.spool import ModelInputs, PlotInputs

#: The store ``mlflow ui`` / ``mlflow server`` use when given none (MLflow 3.x), relative to the
#: working directory.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: Where ``mlflow server`` keeps artifacts (``--artifacts-destination`` default), relative to the
#: directory it runs in. Experiments we create on a database store put theirs there too.
ARTIFACTS_DIR = "mlartifacts"

TrialState = Literal["COMPLETE", "PRUNED", "FAIL"]
#: Trial state → MLflow run status.
RUN_STATUS: dict[str, str] = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

#: MLflow limits (mlflow.utils.validation): param values, tags, entities per log_batch call.
MAX_PARAM_CHARS = 6000
MAX_ERROR_CHARS = 5000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

#: Seconds between two writes of buffered per-epoch metrics: the first epoch is written at once
#: (the run shows a curve), the others when this much time has passed since the last write, and
#: whatever is left with the final metrics or when the run ends (pruned, failed).
#:
#: Measured for a 15-epoch trial, 4 metrics per epoch, on a local SQLite store in WAL mode:
#:   a synchronous ``log_batch`` per epoch ................. 57-119 ms per trial (15 writes)
#:   ``log_batch(synchronous=False)`` per epoch ............ 13 ms, measured while the main
#:       thread sleeps; in a real trial MLflow's logging threads compete with the training loop
#:       for the GIL, errors are only logged, and the run must wait for its queue before it ends
#:   buffered, flushed every 2 s and with the final metrics .. 4-6 ms (one write, fast trial)
#: A slow trial (epochs longer than 2 s) still writes every epoch, so the UI's curves stay live;
#: a fast one, the common case in a search, pays for one write instead of fifteen. The first
#: write comes 2 s after the run starts (or with the first epoch that ends later), with the run's
#: parameters: a trial that ends sooner writes its params and curves once, with its end, from
#: the sender. On the reference trial (0.25 s) that took two store calls off the trial's path
#: (the params, the first epoch): 7.8 ms on a local store, ~25 ms against a server.
EPOCH_FLUSH_SECONDS = 2.0
#: After a failed write of epoch metrics, how long the trial keeps them before trying again.
PAUSE_AFTER_FAILURE_SECONDS = 30.0

#: A run's unique key: finds the run a create made when its answer was lost (no duplicate runs).
RUN_KEY_TAG = "hpo.run_key"

#: The experiment tag MLflow's UI reads to show an experiment as model training (its runs), not
#: as a GenAI app (traces); the value is the UI's own name for that kind.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: Seconds the reachability check of an HTTP tracking server may take.
CONNECT_TIMEOUT_SECONDS = 3.0


#: Trial runs whose artifact URI a tracker remembers (its recent ones: their ends are sent soon).
MAX_KNOWN_RUNS = 256


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///mlflow.db`` (what ``mlflow ui`` opens)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def absolute_store_uri(uri: str) -> str:
    """A relative ``sqlite:///file.db`` made absolute; any other URI unchanged.

    MLflow caches its stores by URI string: two studies in one process that open
    ``sqlite:///mlflow.db`` from different directories would otherwise share the first one's
    database (seen in the test suite, where every test has its own directory).
    """
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path, sep, query = uri[len(prefix) :].partition("?")
        if path and path != ":memory:":
            return f"{prefix}{Path(path).absolute()}{sep}{query}"
    return uri


def registry_uri(tracking_uri: str) -> str:
    """The Model Registry that goes with ``tracking_uri``: ``MLFLOW_REGISTRY_URI`` if set, else the
    tracking store itself. Never MLflow's process-global URI, which another study in the same
    process (or a test) may have set."""
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri


def default_artifact_root(tracking_uri: str) -> str:
    """Absolute ``mlartifacts`` directory for experiments created on a database store.

    ``mlflow server`` stores artifacts of the experiments it creates in ``./mlartifacts/<id>``
    (``--artifacts-destination``); a client that writes to ``sqlite:///mlflow.db`` directly would
    otherwise use ``./mlruns/<id>``. Both show in the UI (the server reads local locations), but
    one directory next to the database is what a user expects to find, back up and delete. For
    SQLite the directory is next to the database file; for other databases, the working
    directory.
    """
    base = Path.cwd()
    if tracking_uri.startswith("sqlite:///"):
        db_path = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
        if db_path and db_path != ":memory:":
            base = Path(db_path).expanduser().absolute().parent
    return str(base / ARTIFACTS_DIR)


def _tune_sqlite(store: Any) -> None:
    """Put a SQLite store in WAL mode with ``synchronous=NORMAL`` (see :mod:`hpo.sqlite_tuning`)."""
    from hpo.sqlite_tuning import tune_sqlite_engine

    tune_sqlite_engine(getattr(store, "engine", None))


@contextmanager
def _creating(uri: str) -> Iterator[None]:
    """Around opening a SQLite store: hold its ``<file>.lock``; a new one starts as a copy of
    its tables' template (:mod:`hpo.tracking.store_seed`).

    Opening a new store creates its tables and runs MLflow's migrations; two processes doing so
    at once (two studies on a Postgres storage sharing one local ``mlflow.db``) fail with
    "table runs already exists" or "duplicate column name", measured 9 of 12 processes in 4
    rounds of 3, and may leave the database half-migrated.
    """
    from hpo.storage import file_lock, sqlite_lock_file
    from hpo.tracking.store_seed import seed

    lock = sqlite_lock_file(uri)
    if lock is None:
        yield
        return
    with file_lock(lock):
        seed(lock.with_name(lock.name.removesuffix(".lock")))
        yield


def open_client(uri: str) -> MlflowClient:
    """A client of the store at ``uri`` (absolute), its tables made: a new SQLite store is
    created under its ``<file>.lock`` (see :func:`_creating`) and put in WAL mode. A store that
    cannot be opened is a one-line :class:`TrackingError`."""
    from mlflow.tracking import MlflowClient

    if _is_http(uri):
        from hpo.tracking import request_context

        request_context.install()  # half the client's CPU per request (see there)
    with _tracking_errors("opening the tracking store", uri), _creating(uri):
        client = MlflowClient(uri, registry_uri=registry_uri(uri))
        _tune_sqlite(client._tracking_client.store)
    return client


def _is_server_database(uri: str) -> bool:
    """A database reached over the network (not SQLite), e.g. ``postgresql://…``."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme in ("postgresql", "mysql", "mssql")


def _probe_database(uri: str) -> None:
    """Connect once with a short timeout: MLflow's own engine retries for most of an hour."""
    import sqlalchemy

    connect_args: dict[str, Any] = {}
    if uri.startswith(("postgresql", "mysql")):
        connect_args["connect_timeout"] = int(CONNECT_TIMEOUT_SECONDS)
    try:
        engine = sqlalchemy.create_engine(
            uri, connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool
        )
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # any driver's error: unreachable, refused, bad credentials
        raise TrackingError(
            f"tracking_uri: cannot reach the tracking database at {_mask(uri)}: "
            f"{_first_line(getattr(exc, 'orig', None) or exc)}"
        ) from None


def _mask(uri: str) -> str:
    from hpo.storage import mask_url

    return mask_url(uri)


def _first_line(exc: BaseException) -> str:
    """The gist of an error, on one line: MLflow's HTTP client wraps a refused connection in
    several hundred characters of urllib3 detail."""
    from hpo.tracking.outage import gist

    text = str(getattr(exc, "message", None) or exc).strip()
    return gist(text.splitlines()[0]) if text else type(exc).__name__


def _probe_http(uri: str) -> None:
    """``GET /health`` of a tracking server, with a short timeout: MLflow's client would retry
    for minutes before giving up."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(
            url, timeout=CONNECT_TIMEOUT_SECONDS, context=_tls_context(uri)
        ) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TrackingError(
            f"tracking_uri: cannot reach MLflow tracking server at {_mask(uri)}: {reason}"
        ) from None
    if status != 200:
        raise TrackingError(
            f"tracking_uri: cannot reach MLflow tracking server at {_mask(uri)}: "
            f"GET /health answered HTTP {status}"
        )


def _tls_context(uri: str) -> ssl.SSLContext | None:
    """The TLS settings MLflow's own client honours (self-signed or private CA servers)."""
    if not uri.startswith("https://"):
        return None
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()
    return ssl.create_default_context(cafile=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


@contextmanager
def _tracking_errors(what: str, uri: str) -> Iterator[None]:
    """Turn a failure of the store (unreachable, refused) into a one-line :class:`TrackingError`.

    Programming errors (``TypeError`` …) are left alone: they are hpo's bugs, not the user's.
    """
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    try:
        yield
    except HpoError:
        raise
    except (MlflowException, OSError, sqlalchemy.exc.SQLAlchemyError) as exc:
        raise TrackingError(
            f"tracking_uri: {what} failed on {_mask(uri)}: {_first_line(exc)}"
        ) from exc


def _write_images(images: Mapping[str, Figure | bytes | str], directory: Path) -> None:
    """Write ``images`` under ``directory`` (see :meth:`TrialRun.log_images`)."""
    for name, image in images.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(image, str):
            path.write_text(image, encoding="utf-8")
        elif isinstance(image, bytes):
            path.write_bytes(image)
        else:
            from hpo.tracking.plots import figure_png

            path.write_bytes(figure_png(image))


def _str_params(params: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params are strings of at most 6000 characters (longer ones are cut, with a mark)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        text = str(value)
        if len(text) > MAX_PARAM_CHARS:
            text = text[: MAX_PARAM_CHARS - 3] + "..."
        out[str(key)] = text
    return out


def _metric(key: str, value: Any, step: int, timestamp: int) -> Metric:
    from mlflow.entities import Metric

    return Metric(key=key, value=float(value), timestamp=timestamp, step=step)


def _now_ms() -> int:
    return int(time.time() * 1000)


class StudyTracker:
    """The MLflow side of one study: its experiment, its parent run, and trial runs.

    Cheap to create (nothing is contacted until a method needs it) and safe to share between
    the threads of one process: every call goes through this tracker's own client.
    """

    def __init__(self, tracking_uri: str, study_name: str) -> None:
        self.tracking_uri = absolute_store_uri(tracking_uri)
        self.study_name = study_name
        self._client: MlflowClient | None = None
        self.parent_run_id: str | None = None
        self._experiment_id: str | None = None
        self._lock = threading.RLock()
        #: Sends the end of each trial's run (:mod:`hpo.tracking.finisher`); None: in the
        #: calling thread (see :attr:`sender`).
        self.finisher: Finisher | None = None
        #: When a write to the store last failed (monotonic), until it answers again.
        self._unreachable_since: float | None = None
        #: A trial run was opened in this process (see :meth:`start_trial`).
        self._opened_before = False
        #: The artifact URIs of the trial runs this process created, by run id (the sender
        #: uploads there without reading the run first; see :meth:`TrialRun.log_images`).
        self._artifact_uris: dict[str, str] = {}

    @property
    def sender(self) -> Finisher:
        """:attr:`finisher`, or one that sends in the calling thread."""
        if self.finisher is None:
            from hpo.tracking.finisher import Finisher

            self.finisher = Finisher(self, background=False)
        return self.finisher

    # -- the store --------------------------------------------------------------------------
    @property
    def client(self) -> MlflowClient:
        """This tracker's client, created on first use: creating one opens the store (and a new
        SQLite database gets its tables, ~2 s)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = open_client(self.tracking_uri)
        return self._client

    def check_connection(self) -> None:
        """Fail fast, before anything is created, if the store cannot be used for this study.

        An HTTP server is probed on ``/health`` with a short timeout (the MLflow client itself
        retries for minutes before giving up). A database store is opened (which creates its
        tables on first use). Then the study's experiment, if it exists, must be usable: not
        deleted, and with artifacts this client can write.
        """
        uri = self.tracking_uri
        self.probe()
        with _tracking_errors("opening the tracking store", uri):
            experiment = self.client.get_experiment_by_name(self.study_name)
        if experiment is not None:
            self._check_experiment(experiment)

    def probe(self) -> None:
        """Check that the store answers (a server's ``/health``, a database's connection) with
        a short timeout; :class:`TrackingError` if not. A SQLite file always answers."""
        uri = self.tracking_uri
        if _is_http(uri):
            _probe_http(uri)
        elif _is_server_database(uri):
            _probe_database(uri)

    @property
    def opens_in_background(self) -> bool:
        """Whether trial runs are best opened while their trials train
        (``start_trial(background=True)``): against a tracking server, where creating a run and
        its LoggedModel is mostly waiting for answers (13 + 10 ms a trial on a loopback server
        busy with the previous trial's uploads, ``benchmarks/overhead.py``). Not on a local or
        database store: there it is the store's own Python work, which only takes turns with
        the training loop for the interpreter (measured: the reference trial's training 20 ms
        longer for 8 ms of store calls moved off its path)."""
        return self.tracking_uri.split(":", 1)[0].lower() in ("http", "https")

    def note_unreachable(self) -> None:
        """A write to the store just failed: :meth:`ensure_reachable` will check before the
        next trial starts."""
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()

    def ensure_reachable(self, limit: float | None = None) -> None:
        """Before a trial starts: if the store was seen away, wait (with one warning) until it
        answers again, up to ``limit`` seconds (default
        :func:`hpo.tracking.finisher.outage_seconds`) since it went away; then
        :class:`TrackingError`. A trial is not started for a store that is away: its run could
        not even be created."""
        from hpo.tracking.finisher import outage_seconds

        since = self._unreachable_since
        if since is None:
            return
        limit = outage_seconds() if limit is None else limit
        delay, warned = 0.5, False
        while True:
            try:
                self.probe()
                self._unreachable_since = None
                return
            except TrackingError as exc:
                waited = time.monotonic() - since
                if waited + delay > limit:
                    raise TrackingError(
                        f"{exc} (for {waited:.0f} s); finished trials are saved, and the runs "
                        f"that could not be sent wait in the spool: `hpo sync {self.study_name}` "
                        "sends them once the store is back"
                    ) from None
                if not warned:
                    warned = True
                    self._warn(f"{exc}; waiting up to {limit - waited:.0f} s before the next trial")
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _check_experiment(self, experiment: Any) -> None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(
                f"tracking_uri: experiment '{self.study_name}' (id {experiment.experiment_id}) "
                f"was deleted in {_mask(self.tracking_uri)}; restore it with "
                f"`MLFLOW_TRACKING_URI={_mask(self.tracking_uri)} mlflow experiments restore "
                f"--experiment-id {experiment.experiment_id}`, or remove it for good with "
                "`mlflow gc`"
            )
        location = str(experiment.artifact_location or "")
        if location.startswith("mlflow-artifacts:") and not _is_http(self.tracking_uri):
            raise TrackingError(
                f"tracking_uri: experiment '{self.study_name}' keeps its artifacts on a tracking "
                f"server ({location}); use that server's http:// URI as tracking_uri, not "
                f"{_mask(self.tracking_uri)}"
            )

    @property
    def experiment_id(self) -> str:
        """The study's experiment, created on first use (race-tolerant across processes)."""
        if self._experiment_id is None:
            with self._lock:
                if self._experiment_id is None:
                    self._experiment_id = self._get_or_create_experiment()
        return self._experiment_id

    def _get_or_create_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        name, uri = self.study_name, self.tracking_uri
        with _tracking_errors(f"getting experiment '{name}'", uri):
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                try:
                    return self._create_experiment()
                except MlflowException as exc:
                    # Another worker of the study created it between our get and create.
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:  # pragma: no cover - created, then deleted at once
                    raise TrackingError(f"tracking_uri: experiment '{name}' vanished")
        self._check_experiment(experiment)
        return str(experiment.experiment_id)

    def _create_experiment(self) -> str:
        from mlflow.entities import ExperimentTag
        from mlflow.store.db.db_types import DATABASE_ENGINES
        from mlflow.utils.uri import get_uri_scheme

        tags = [
            ExperimentTag("hpo.study", self.study_name),
            # What MLflow's UI records when a user classifies an experiment: model training,
            # not a GenAI app. The UI's global GenAI / Model-training switch still picks the
            # first view, so the links hpo prints also carry ?workflowType=machine_learning.
            ExperimentTag(EXPERIMENT_KIND_TAG, EXPERIMENT_KIND),
        ]
        scheme = get_uri_scheme(self.tracking_uri)
        if scheme.split("+")[0] in DATABASE_ENGINES:
            # The artifact location must contain the experiment id, known only once the row
            # exists: a store whose default root is our mlartifacts directory appends it, as
            # `mlflow server --default-artifact-root` does. It shares the client's engine.
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            store = SqlAlchemyStore(self.tracking_uri, default_artifact_root(self.tracking_uri))
            return str(store.create_experiment(self.study_name, tags=tags))
        # A server (or a file store) decides the location itself.
        return str(
            self.client.create_experiment(self.study_name, tags={t.key: t.value for t in tags})
        )

    # -- the parent run -----------------------------------------------------------------------
    def ensure_parent_run(
        self, run_id: str | None, *, tags: Mapping[str, str], params: Mapping[str, Any]
    ) -> str:
        """Reuse the study's parent run ``run_id`` if it exists here, else create it; return its id.

        A resumed study reopens its parent (status RUNNING again) and refreshes its tags. Params
        are immutable in MLflow: only those it does not have yet are added.
        """
        from mlflow.entities import Param, RunStatus, RunTag
        from mlflow.exceptions import MlflowException

        uri = self.tracking_uri
        all_tags = {**tags, "hpo.study": self.study_name, "hpo.role": "study"}
        with _tracking_errors("opening the study's parent run", uri):
            run = None
            if run_id:
                try:
                    run = self.client.get_run(run_id)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                        raise
                if run is not None and (
                    run.info.experiment_id != self.experiment_id
                    or run.info.lifecycle_stage != "active"
                ):
                    run = None  # another store's id, or deleted: start a fresh parent
            if run is None:
                run = self.client.create_run(
                    self.experiment_id, run_name=self.study_name, tags=all_tags
                )
                existing: Mapping[str, str] = {}
            else:
                if run.info.status != "RUNNING":
                    self._store().update_run_info(
                        run.info.run_id, RunStatus.RUNNING, end_time=None, run_name=None
                    )
                self._log_batch(
                    run.info.run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()]
                )
                existing = run.data.params
            new = {k: v for k, v in _str_params(params).items() if k not in existing}
            self._log_batch(run.info.run_id, params=[Param(k, v) for k, v in new.items()])
        self.parent_run_id = run.info.run_id
        return run.info.run_id

    def end_parent_run(self, status: str = "FINISHED") -> None:
        """Close the parent run with ``status``; ``"RUNNING"`` leaves it open (budget not met)."""
        if self.parent_run_id is None or status == "RUNNING":
            return
        self._terminate(self.parent_run_id, status)

    def log_parent(
        self,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        step: int | None = None,
    ) -> None:
        """Log summary metrics (e.g. ``best_val_accuracy`` at ``step`` = trial number) and tags
        on the parent run, in one call."""
        if self.parent_run_id is None:
            raise RuntimeError("ensure_parent_run() must be called first")
        self.log_to_run(self.parent_run_id, metrics=metrics, tags=tags, step=step)

    def log_parent_points(
        self,
        points: Sequence[tuple[int, int, Mapping[str, float]]],
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Several summaries of the parent run in one call: ``(step, timestamp in ms, metrics)``
        each, and the latest ``tags``."""
        from mlflow.entities import RunTag

        if self.parent_run_id is None:
            raise RuntimeError("ensure_parent_run() must be called first")
        self._log_batch(
            self.parent_run_id,
            metrics=[
                _metric(k, v, step, timestamp)
                for step, timestamp, metrics in points
                for k, v in metrics.items()
            ],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    def set_parent_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the parent run."""
        self.log_parent(tags=tags)

    def log_parent_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics on the parent run."""
        self.log_parent(metrics=metrics, step=step)

    def log_parent_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as an artifact of the parent run (a CSV or HTML summary, say)."""
        if self.parent_run_id is None:
            raise RuntimeError("ensure_parent_run() must be called first")
        with _tracking_errors(f"logging {artifact_file}", self.tracking_uri):
            self.client.log_text(self.parent_run_id, text, artifact_file)

    def log_to_run(
        self,
        run_id: str | None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        step: int | None = None,
    ) -> None:
        """Log metrics and tags on any run of the study (e.g. test metrics on the best trial's);
        a missing ``run_id`` is ignored."""
        from mlflow.entities import RunTag

        if not run_id:
            return
        now = _now_ms()
        self._log_batch(
            run_id,
            metrics=[_metric(k, v, step or 0, now) for k, v in (metrics or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    # -- trial runs ---------------------------------------------------------------------------
    def start_trial(
        self,
        number: int,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        *,
        background: bool = False,
        model: bool = False,
        on_open: Callable[[str], None] | None = None,
    ) -> TrialRun:
        """Create the run of trial ``number`` under the parent run; its parameters are written
        with its first metrics (:data:`EPOCH_FLUSH_SECONDS`) or its end, whichever comes first.

        ``model``: also create the run's LoggedModel now (PENDING until :meth:`TrialRun.log_model`
        uploads it; deleted if the trial ends without a model), with the run's parameters and
        the ``hpo.study`` / ``hpo.trial`` tags. ``on_open(run_id)`` is called once the run
        exists (before its model is created). ``background``: do all this in a thread while the
        caller goes on (the trial trains): the run's id is waited for where it is first needed
        (:attr:`TrialRun.run_id`); see :class:`_Opening`.

        A store that is away is waited for (up to :func:`hpo.tracking.finisher.outage_seconds`,
        with one warning), then :class:`~hpo.errors.NotStarted` is raised (by
        :attr:`TrialRun.run_id` in the background). The run carries a unique ``hpo.run_key``
        tag: when a create's answer is lost, the retry finds the run it made instead of making
        a second one.
        """
        if self.parent_run_id is None:
            raise RuntimeError("ensure_parent_run() must be called before start_trial()")
        # The first run of a process is opened here and now: its MLflow calls may import modules
        # that another thread importing them at the same time would find half-initialised.
        background = background and self._opened_before
        trial = TrialRun(self, None, number)
        trial.log_params(params)
        model_tags = {"hpo.study": self.study_name, "hpo.trial": str(number)}

        def open_() -> tuple[str, str | None]:
            run_id = self._create_trial_run(number, tags)
            self._unreachable_since = None
            if on_open is not None:
                on_open(run_id)
            model_id = None
            if model:
                model_id = trial.create_model_or_none(trial.params, model_tags, run_id=run_id)
            self._opened_before = True
            return run_id, model_id

        trial._opening = _Opening(open_, background=background, model=model)
        if not background:
            trial.run_id  # noqa: B018  (raises here what the opening raised)
        return trial

    def _create_trial_run(self, number: int, tags: Mapping[str, str] | None) -> str:
        """Create trial ``number``'s run through an outage of the store (see
        :meth:`start_trial`); return its id."""
        import uuid

        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        from hpo.tracking.finisher import outage_seconds
        from hpo.tracking.outage import Backoff, OutageTooLong, single_attempt

        assert self.parent_run_id is not None
        key = uuid.uuid4().hex
        all_tags = {
            **(tags or {}),
            MLFLOW_PARENT_RUN_ID: self.parent_run_id,
            "hpo.study": self.study_name,
            "hpo.trial": str(number),
            "hpo.state": "RUNNING",
            RUN_KEY_TAG: key,
        }
        what = f"creating the run of trial {number}"

        def create() -> str:
            from hpo.tracking import sql_store

            name = f"trial-{number:04d}"
            with _tracking_errors(what, self.tracking_uri):
                store = self._store()
                if sql_store.supports(store):  # one transaction (hpo.tracking.sql_store)
                    return self._note_run(
                        *sql_store.create_run(store, self.experiment_id, name, all_tags)
                    )
                run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
            return self._created(run)

        def created() -> str | None:
            with _tracking_errors(what, self.tracking_uri):
                found = self.client.search_runs(
                    [self.experiment_id], f"tags.{RUN_KEY_TAG} = '{key}'", max_results=1
                )
            return self._created(found[0]) if found else None

        warned: list[bool] = []

        def on_wait(exc: BaseException, waited: float) -> None:
            from hpo.tracking.finisher import QUIET_SECONDS

            if waited >= QUIET_SECONDS:
                self.note_unreachable()
            if not warned and waited >= QUIET_SECONDS:
                warned.append(True)
                self._warn(
                    f"tracking store unreachable while {what} ({_first_line(exc)}); waiting up "
                    f"to {outage_seconds():.0f} s"
                )

        backoff = Backoff(limit=outage_seconds())
        try:
            with single_attempt():
                return str(backoff.call(create, check=created, on_wait=on_wait))
        except OutageTooLong as exc:
            raise NotStarted(
                f"tracking_uri: {_mask(self.tracking_uri)} unreachable for "
                f"{outage_seconds():.0f} s while {what}: {_first_line(exc.__cause__ or exc)}; "
                "finished trials are saved, and the runs that could not be sent wait in the "
                f"spool: `hpo sync {self.study_name}` sends them once the store is back"
            ) from None

    def _created(self, run: Any) -> str:
        """Note a trial run this process created (its artifact URI); return its id."""
        return self._note_run(str(run.info.run_id), str(run.info.artifact_uri))

    def _note_run(self, run_id: str, artifact_uri: str) -> str:
        with self._lock:
            self._artifact_uris[run_id] = artifact_uri
            while len(self._artifact_uris) > MAX_KNOWN_RUNS:
                del self._artifact_uris[next(iter(self._artifact_uris))]
        return run_id

    def artifact_uri(self, run_id: str) -> str | None:
        """The artifact URI of a trial run this process created (None: not known here)."""
        with self._lock:
            return self._artifact_uris.get(run_id)

    def _warn(self, message: str) -> None:
        if self.finisher is not None:
            self.finisher.warn(message)
        else:
            import sys

            print(f"hpo: {message}", file=sys.stderr, flush=True)

    def load_model(self, model_uri: str) -> nn.Module:
        """Load a model this study logged (``models:/m-…``) from this tracker's store."""
        from hpo.tracking.models import load_pytorch_model

        with _tracking_errors(f"loading model {model_uri}", self.tracking_uri):
            return load_pytorch_model(model_uri, tracking_uri=self.tracking_uri)

    # -- plumbing shared with TrialRun --------------------------------------------------------
    def _store(self) -> Any:
        # The store behind the client. Ending a run through it is one call; the client's
        # set_terminated() also fetches the run and, for a server, prints a "View run" line to
        # stdout for every trial.
        return self.client._tracking_client.store

    def _terminate(self, run_id: str, status: str) -> None:
        from mlflow.entities import RunStatus

        from hpo.tracking import sql_store

        with _tracking_errors(f"ending run {run_id}", self.tracking_uri):
            store = self._store()
            if sql_store.supports(store):  # one statement, the run not read back
                sql_store.end_run(store, run_id, status, _now_ms())
                return
            store.update_run_info(
                run_id, RunStatus.from_string(status), end_time=_now_ms(), run_name=None
            )

    def _log_batch(
        self,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Sequence[Any] = (),
        tags: Sequence[Any] = (),
    ) -> None:
        """``log_batch`` within MLflow's per-call limits; nothing is sent for nothing. On a
        SQLite or PostgreSQL store, each call is one transaction of a few statements
        (:mod:`hpo.tracking.sql_store`), not MLflow's ORM writes."""
        from hpo.tracking import sql_store

        with _tracking_errors(f"logging to run {run_id}", self.tracking_uri):
            params, tags, metrics = list(params), list(tags), list(metrics)
            store = self._store()
            fast = sql_store.supports(store, tags)
            while params or tags or metrics:
                p, params = params[:MAX_PARAMS_PER_BATCH], params[MAX_PARAMS_PER_BATCH:]
                t, tags = tags[:MAX_PARAMS_PER_BATCH], tags[MAX_PARAMS_PER_BATCH:]
                room = MAX_METRICS_PER_BATCH - len(p) - len(t)
                m, metrics = metrics[:room], metrics[room:]
                if fast:
                    sql_store.log_batch(store, run_id, metrics=m, params=p, tags=t)
                else:
                    self.client.log_batch(run_id, metrics=m, params=p, tags=t)


class _Opening:
    """The creation of a trial's run (and its LoggedModel): now, or in a daemon thread while
    the trial trains.

    A run and a LoggedModel are 2 store calls, ~8 ms on a local SQLite store and a round trip
    each to a server (25 ms against a loopback ``mlflow server`` busy with the previous trial's
    uploads, ``benchmarks/overhead.py``), which the trial no longer waits for. A daemon thread,
    not an executor: an outage can keep it waiting for minutes, and Ctrl-C must not wait too.
    """

    def __init__(
        self, open_: Callable[[], tuple[str, str | None]], *, background: bool, model: bool
    ) -> None:
        self._open = open_
        self._result: tuple[str, str | None] | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        #: Whether a LoggedModel is created with the run.
        self.model = model
        if background:
            threading.Thread(target=self._run, name="hpo-open-run", daemon=True).start()
        else:
            self._run()

    def _run(self) -> None:
        try:
            self._result = self._open()
        except BaseException as exc:  # handed to whoever waits for the run
            self._error = exc
        finally:
            self._done.set()

    def wait(self) -> None:
        """Wait for the opening to end (well or not)."""
        self._done.wait()

    def failed(self) -> bool:
        """Whether it has ended without the run (not waiting)."""
        return self._done.is_set() and self._error is not None

    def ok(self) -> bool:
        """Whether it has ended with the run created."""
        return self._done.is_set() and self._error is None

    def result(self) -> tuple[str, str | None]:
        """(run id, LoggedModel id or None), once created; raises what the creation raised."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


def boundary_inputs(data: Dataset) -> dict[str, np.ndarray] | None:
    """The rows a decision boundary is drawn over, for data with exactly two features (the
    boundary is then the model's whole input space); None for other data."""
    if data.input_shape != (2,):
        return None
    return {
        "X_train": data.X_train,
        "y_train": data.y_train,
        "X_val": data.X_val,
        "y_val": data.y_val,
    }


class TrialRun:
    """The MLflow run of one trial. Created by :meth:`StudyTracker.start_trial`.

    While the trial trains, its per-epoch metrics are written in batches (:meth:`log_epoch`). What
    the trial's end adds (final metrics, plots, model, status) is collected
    (:meth:`log_final`, :meth:`attach_plots`, :meth:`attach_model`) and written as one job to the
    spool by :meth:`end`, which hands it to the tracker's finisher (:mod:`hpo.tracking.finisher`).
    :meth:`log_plots`, :meth:`log_model` and :meth:`close` are the sender's side: they write
    to the store at once.
    """

    def __init__(self, tracker: StudyTracker, run_id: str | None, number: int) -> None:
        """``run_id``: the run's id; None while :meth:`StudyTracker.start_trial` opens it."""
        self.tracker = tracker
        self._run_id = run_id
        #: How the run is being created (:meth:`StudyTracker.start_trial`); None: it exists.
        self._opening: _Opening | None = None
        self.number = number
        self.params: dict[str, str] = {}
        self.state: TrialState | None = None
        self._pending: list[Metric] = []
        #: Parameters not written yet: they go with the next flush or the end of the run.
        self._pending_params: dict[str, str] = {}
        # Counted from the run's start: a trial shorter than EPOCH_FLUSH_SECONDS writes nothing
        # while it trains.
        self._last_flush = time.monotonic()
        self._last_epoch = 0
        #: Every metric point logged at ``_last_epoch``: the model links them (:meth:`end`).
        self._step_points: list[Metric] = []
        #: The last per-epoch value of each metric: finals that repeat it are not logged twice.
        self._epoch_values: dict[str, float] = {}
        #: After a failed write, epochs are kept here until this time (monotonic): a store that
        #: is away costs the training loop one failed call, not one per epoch.
        self._paused_until = -math.inf
        self._plots: PlotInputs | None = None
        self._model: ModelInputs | None = None
        #: Where the run's artifacts go, when known without asking the store (the sender's
        #: side: from the job).
        self.artifact_uri: str | None = None
        #: Where the files of the LoggedModels created here go, by model id, as their
        #: creation answered.
        self.model_locations: dict[str, str] = {}

    @property
    def run_id(self) -> str:
        """The run's id; waits for the run to be created if it is being created in the
        background, and raises what that raised (:class:`~hpo.errors.NotStarted`, …)."""
        if self._run_id is None:
            assert self._opening is not None
            self._run_id = self._opening.result()[0]
        return self._run_id

    @property
    def open(self) -> bool:
        """Whether the run exists (its id is known without waiting)."""
        return self._run_id is not None or (self._opening is not None and self._opening.ok())

    @property
    def opened_model_id(self) -> str | None:
        """The LoggedModel created with the run (``start_trial(model=True)``), once the run is
        opened; None if it was not (no model asked for, the store away, the run not created)."""
        if self._opening is None:
            return None
        self._opening.wait()
        return self._opening.result()[1] if self._opening.ok() else None

    # -- metrics and params --------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record parameters (values stringified, cut at MLflow's 6000 characters); written with
        the next write of metrics (:meth:`flush`) or the end of the run."""
        values = _str_params(params)
        self.params.update(values)
        self._pending_params.update(values)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Record one epoch's metrics at ``step=epoch``; written in batches (see
        :data:`EPOCH_FLUSH_SECONDS`), the first :data:`EPOCH_FLUSH_SECONDS` after the run's
        start."""
        if self._opening is not None and self._opening.failed():
            # The run could not be created (the store stayed away): the trial has nowhere to
            # log, so it stops training now (NotStarted) rather than at its end.
            self.run_id  # noqa: B018
        now = _now_ms()
        if epoch > self._last_epoch:
            self._last_epoch, self._step_points = epoch, []
        for key, value in metrics.items():
            point = _metric(key, value, epoch, now)
            self._pending.append(point)
            if epoch == self._last_epoch:
                self._step_points.append(point)
            self._epoch_values[key] = float(value)
        # A run still being created (a store that is slow or away) is not waited for here:
        # the points wait for the next flush or the end of the run.
        if time.monotonic() - self._last_flush >= EPOCH_FLUSH_SECONDS and self.open:
            self.flush()

    def flush(self) -> None:
        """Write the buffered per-epoch metrics now, if the store takes them.

        A store that is away (or answers with an error) does not stop the trial: the metrics
        stay buffered and go with the end of the run (:meth:`end`), and no write is tried for
        :data:`PAUSE_AFTER_FAILURE_SECONDS`.
        """
        from hpo.tracking.outage import single_attempt

        self._last_flush = time.monotonic()
        if (not self._pending and not self._pending_params) or (
            self._last_flush < self._paused_until
        ):
            return
        pending, self._pending = self._pending, []
        params, self._pending_params = self._pending_params, {}
        try:
            with single_attempt():
                self.tracker._log_batch(self.run_id, metrics=pending, params=_params(params))
        except TrackingError:
            # Kept as they are: sent again with the same timestamps, a point that did reach the
            # store is stored once (see hpo.tracking.finisher); a parameter logged again with
            # the same value is accepted.
            self._pending = pending + self._pending
            self._pending_params = {**params, **self._pending_params}
            self.tracker.note_unreachable()
            self._paused_until = self._last_flush + PAUSE_AFTER_FAILURE_SECONDS

    def log_final(self, metrics: Mapping[str, float]) -> None:
        """Record the evaluation of the trained model, at the last epoch's step; written with
        the end of the run.

        A final metric that is also a per-epoch curve (``val_loss``, ``val_accuracy``) describes
        the same model as the curve's last point: when the values agree it is not logged again,
        so each curve keeps exactly one point per epoch.
        """
        # Later than every epoch point: when a final value and a point of the same step arrive
        # in one batch, the store's latest value is the one with the later timestamp.
        now = max([_now_ms(), *(p.timestamp + 1 for p in self._step_points)])
        for key, value in metrics.items():
            previous = self._epoch_values.get(key)
            if previous is not None and _same(previous, float(value)):
                continue
            point = _metric(key, value, self._last_epoch, now)
            self._pending.append(point)
            self._step_points.append(point)

    def attach_plots(self, inputs: PlotInputs) -> None:
        """The trial's plots, drawn and logged with the end of the run (:meth:`log_plots`)."""
        self._plots = inputs

    def attach_model(self, inputs: ModelInputs) -> str | None:
        """The trained model, logged with the end of the run (:meth:`log_model`).

        Its LoggedModel exists when this returns (created with the run, or now), so the model's
        URI (``models:/m-…``, returned) is known while the trial is still open; None if the
        store was away (the sender creates it then).
        """
        inputs.tags = {
            **inputs.tags,
            "hpo.study": self.tracker.study_name,
            "hpo.trial": str(self.number),
        }
        inputs.params = {**self.params, **inputs.params}
        inputs.step = self._last_epoch
        self.run_id  # noqa: B018  (the run exists: raises what its creation raised)
        if self._opening is not None and self._opening.model:
            # Created with the run (while the trial trained), with these params and tags; None
            # if the store was away then (the sender creates it).
            inputs.model_id = self.opened_model_id
        else:
            inputs.model_id = self.create_model_or_none(inputs.params, inputs.tags)
        if inputs.model_id is not None:
            inputs.artifact_location = self.model_locations.get(inputs.model_id)
        self._model = inputs
        return f"models:/{inputs.model_id}" if inputs.model_id else None

    def create_model(
        self, params: Mapping[str, str], tags: Mapping[str, str], *, run_id: str | None = None
    ) -> str:
        """Create this run's LoggedModel (its artifacts come with :meth:`log_model`); return
        its id. ``run_id``: the run's, while it is still being opened."""
        from hpo.tracking import sql_store

        source = run_id or self.run_id
        with _tracking_errors(f"creating the model of run {source}", self.tracker.tracking_uri):
            store = self.tracker._store()
            if sql_store.supports(store):  # one transaction (hpo.tracking.sql_store)
                logged = sql_store.new_logged_model(
                    store, self.tracker.experiment_id, "model", source, params, tags
                )
            else:
                logged = self.tracker.client.create_logged_model(
                    experiment_id=self.tracker.experiment_id,
                    name="model",
                    source_run_id=source,
                    params=dict(params),
                    tags=dict(tags),
                )
        # Kept with the job: the sender saves or uploads the model there without asking for it.
        self.model_locations[str(logged.model_id)] = str(logged.artifact_location)
        return str(logged.model_id)

    def create_model_or_none(
        self, params: Mapping[str, str], tags: Mapping[str, str], *, run_id: str | None = None
    ) -> str | None:
        """:meth:`create_model` in one attempt; None if the store does not take it (the sender
        creates the model then)."""
        from hpo.tracking.outage import classify, single_attempt

        try:
            with single_attempt():
                return self.create_model(params, tags, run_id=run_id)
        except TrackingError as exc:
            if classify(exc).transient:
                self.tracker.note_unreachable()  # checked before the next trial starts
            return None

    # -- artifacts ------------------------------------------------------------------------------
    def log_figure(self, figure: Figure | bytes | str, artifact_file: str) -> None:
        """Log one figure as ``artifact_file``: a matplotlib figure (rendered to PNG), the bytes of
        an image, or an SVG document as text (``roc.svg``)."""
        self.log_images({artifact_file: figure})

    def log_images(self, images: Mapping[str, Figure | bytes | str]) -> None:
        """Log several images in one artifact upload (one call, not one per file): matplotlib
        figures are rendered to PNG, text (SVG) is written as UTF-8, bytes as they are.

        Where the run's artifacts are local files (a SQLite or PostgreSQL store's default),
        the images are written into the run's artifact directory directly: through a temporary
        directory and MLflow's copy, each file was made twice and deleted once (0.4-0.6 ms of
        CPU per file made on this project's ext4 machines).
        """
        what = f"uploading plots of run {self.run_id}"
        local = self._local_artifact_dir()
        if local is not None:
            with _tracking_errors(what, self.tracker.tracking_uri):
                _write_images(images, local)
            return
        with tempfile.TemporaryDirectory(prefix="hpo-plots-") as tmp:
            _write_images(images, Path(tmp))
            with _tracking_errors(what, self.tracker.tracking_uri):
                self._log_artifacts(tmp)

    def _local_artifact_dir(self) -> Path | None:
        """The run's artifact directory, where its artifact URI is known and local; else None."""
        if self.artifact_uri is None:
            return None
        from mlflow.utils.file_utils import local_file_uri_to_path
        from mlflow.utils.uri import is_local_uri

        if not is_local_uri(self.artifact_uri, is_tracking_or_registry_uri=False):
            return None
        return Path(local_file_uri_to_path(self.artifact_uri))

    def _log_artifacts(self, directory: str) -> None:
        """``MlflowClient.log_artifacts(run_id, directory)``, straight to the run's artifact
        store when its URI is known: the client reads the run first to learn it (a request to a
        tracking server, per run)."""
        if self.artifact_uri is None:
            self.tracker.client.log_artifacts(self.run_id, directory)
            return
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

        tracking_uri = self.tracker.tracking_uri
        uri = add_databricks_profile_info_to_artifact_uri(self.artifact_uri, tracking_uri)
        get_artifact_repository(uri, tracking_uri=tracking_uri).log_artifacts(directory)

    def log_plots(
        self,
        y_true: np.ndarray,
        proba: np.ndarray,
        classes: Sequence[str],
        history: Sequence[dict[str, float]],
        *,
        prediction_counts: Sequence[Sequence[int]] | None = None,
        boundary: Mapping[str, np.ndarray] | None = None,
        feature_names: Sequence[str] | None = None,
        predict_proba: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """Draw and log the plots of a trial (SVG but the boundary): ``confusion_matrix.svg``,
        ``roc_curves.svg``, ``learning_curves.svg``; ``prediction_distribution.svg`` with
        ``prediction_counts`` (the loop's per-epoch predicted-class counts);
        ``decision_boundary.png`` with ``boundary`` (:func:`boundary_inputs`) and
        ``predict_proba`` (the trained model on float32 rows).

        Measured on 2 shared CPU cores (``benchmarks/overhead.py``, 10-class reference trial):
        the four SVG plots take a few ms where the same plots drawn with matplotlib took
        0.64 s; the decision boundary (2-D data only, matplotlib) takes ~0.2 s, its 22,500 grid
        predictions by a small MLP 3 ms of it.
        """
        import numpy as np

        from hpo.tracking import plots

        y_pred = np.asarray(proba).argmax(axis=1)
        figures: dict[str, Figure | str] = {
            "confusion_matrix.svg": plots.confusion_matrix_figure(y_true, y_pred, classes),
            "roc_curves.svg": plots.roc_figure(y_true, proba, classes),
            "learning_curves.svg": plots.learning_curves_figure(list(history)),
        }
        if prediction_counts:
            figures["prediction_distribution.svg"] = plots.prediction_distribution_figure(
                prediction_counts, classes, y_true
            )
        if boundary is not None and predict_proba is not None:
            figures["decision_boundary.png"] = plots.decision_boundary_figure(
                predict_proba,
                boundary["X_train"],
                boundary["y_train"],
                classes,
                X_val=boundary["X_val"],
                y_val=boundary["y_val"],
                feature_names=feature_names,
            )
        self.log_images(figures)

    def log_model(
        self,
        model: nn.Module,
        input_example: np.ndarray,
        metadata: Mapping[str, Any] | None = None,
        *,
        model_id: str | None = None,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        step: int | None = None,
        link: bool = True,
        step_metrics: Sequence[Sequence[Any]] | None = None,
        location: str | None = None,
    ) -> str:
        """Log the trained model (``pt2``, with signature, input example and ``metadata``); return
        its URI (``models:/m-…``), which :func:`hpo.tracking.models.load_pytorch_model` loads.
        ``model_id``: a LoggedModel created for it already (:meth:`attach_model`); ``link``:
        record it as the run's output (False: the run has that link already); ``step_metrics``:
        the run's metric rows at ``step`` (:attr:`hpo.tracking.spool.ModelInputs.step_metrics`),
        linked to the model without reading the run back; ``location``: where that LoggedModel's
        files go, if known (:attr:`hpo.tracking.spool.ModelInputs.artifact_location`)."""
        from hpo.tracking.models import log_pytorch_model

        self.flush()  # the model links the metrics of its step: they must be written
        with _tracking_errors(f"logging the model of run {self.run_id}", self.tracker.tracking_uri):
            return log_pytorch_model(
                self.tracker.client,
                model,
                input_example,
                experiment_id=self.tracker.experiment_id,
                run_id=self.run_id,
                params=self.params if params is None else params,
                tags=(
                    {"hpo.study": self.tracker.study_name, "hpo.trial": str(self.number)}
                    if tags is None
                    else tags
                ),
                step=self._last_epoch if step is None else step,
                metadata=metadata,
                model_id=model_id,
                link=link,
                step_metrics=step_metrics,
                location=location,
            )

    def store_errors(self, what: str) -> Any:
        """A block whose store failures become one-line :class:`TrackingError` s."""
        return _tracking_errors(f"{what} of run {self.run_id}", self.tracker.tracking_uri)

    # -- the end ---------------------------------------------------------------------------------
    def end(self, state: TrialState, error: str | None = None) -> Sent | None:
        """Mirror the trial's final state on the run, with everything collected for its end;
        idempotent (only the first call counts).

        The job is written to the spool first (:mod:`hpo.tracking.spool`), then handed to the
        tracker's finisher: sent in the background (returns None), or now (returns what became
        of it). A store that is away loses nothing: the job waits in the spool. Raises
        :class:`TrackingError` only if the job cannot be written to the spool (a full disk).
        """
        from hpo.tracking.spool import Job, metric_rows, write_job

        if self.state is not None:
            return None
        if state not in RUN_STATUS:
            raise ValueError(f"state must be one of {sorted(RUN_STATUS)}, got {state!r}")
        if self._model is not None:
            # The points at the last epoch; the model links those at its own step of them.
            self._model.step_metrics = metric_rows(self._step_points)
        job = Job(
            study=self.tracker.study_name,
            trial=self.number,
            run_id=self.run_id,
            state=state,
            error=error,
            metrics=metric_rows(self._pending),
            params=dict(self._pending_params),
            plots=self._plots if state == "COMPLETE" else None,
            model=self._model if state == "COMPLETE" else None,
            tracking_uri=_mask(self.tracker.tracking_uri),
            # A trial that ends without a model leaves no model behind.
            discard_model=self.opened_model_id if state != "COMPLETE" else None,
            artifact_uri=self.artifact_uri or self.tracker.artifact_uri(self.run_id),
        )
        try:
            path = write_job(job)
        except OSError as exc:
            raise TrackingError(
                f"could not write the end of run {self.run_id} to the spool: {exc}"
            ) from exc
        self._pending, self._pending_params, self._plots, self._model = [], {}, None, None
        # Only now: if the spool failed, a second call (e.g. FAIL after a failed COMPLETE) retries.
        self.state = state
        return self.tracker.sender.submit(path)

    def close(
        self, state: str, error: str | None = None, tags: Mapping[str, str] | None = None
    ) -> None:
        """End the run in the store now: its state tags, then its status (the sender's side of
        :meth:`end`)."""
        from mlflow.entities import RunTag

        all_tags = end_tags(state, error, tags)
        self.tracker._log_batch(self.run_id, tags=[RunTag(k, v) for k, v in all_tags.items()])
        self.tracker._terminate(self.run_id, RUN_STATUS[state])


def end_tags(
    state: str, error: str | None = None, tags: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The tags that end a trial's run: ``tags``, ``hpo.state``, and ``hpo.error`` (FAIL) or
    ``hpo.reason`` (the error or reason of another state)."""
    if state not in RUN_STATUS:
        raise ValueError(f"state must be one of {sorted(RUN_STATUS)}, got {state!r}")
    all_tags = {**(tags or {}), "hpo.state": state}
    if state == "FAIL":
        all_tags["hpo.error"] = (error or "unknown error")[:MAX_ERROR_CHARS]
    elif error:
        all_tags["hpo.reason"] = error[:MAX_ERROR_CHARS]
    return all_tags


def _params(values: Mapping[str, str]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, v) for k, v in values.items()]


def _same(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)

"""Storage URLs → Optuna storages.

* ``sqlite:///hpo.db`` (the default, in the working directory): embedded, no set-up. Several local
  processes share it without "database is locked": every write transaction starts with
  ``BEGIN IMMEDIATE`` (it takes the write lock first, so two transactions can never deadlock on a
  lock upgrade, the one case SQLite answers at once with "locked" instead of waiting) and waits
  up to :data:`SQLITE_BUSY_TIMEOUT_S` for it.
* ``postgresql+psycopg://user:pass@host/db`` (the team server): ``pool_pre_ping`` so a database
  restart costs a reconnect, not a crashed worker.
* ``journal:path/to/file.log``: Optuna's append-only journal file, fastest for local parallel runs.

RDB storages (SQLite, Postgres) get Optuna's heartbeat when asked (:func:`open_storage`'s
``heartbeat``): a trial whose worker died is failed after the grace period and re-queued.

:func:`study_lock` serialises the few steps that must happen once per study across processes
(creating it and its parent run; checking the budget and claiming a trial): a Postgres advisory
lock, or an exclusive ``flock`` on a file next to the SQLite database or journal.

Passwords in URLs are masked wherever a URL is shown (:func:`mask_url`).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo.errors import StorageError, StorageUnavailable
from hpo.sqlite_tuning import tune_sqlite_engine

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage, RDBStorage

    from hpo.spec import HeartbeatSpec

StaleTrialCallback = Callable[["optuna.Study", "optuna.trial.FrozenTrial"], None]

DEFAULT_STORAGE = "sqlite:///hpo.db"
ENV_STORAGE = "HPO_STORAGE"
#: Seconds SQLite waits for a lock held by another process before giving up.
SQLITE_BUSY_TIMEOUT_S = 60
#: Times a new database's tables are created again after another process created them at the
#: same moment (see :func:`_lost_creation_race`).
CREATION_RETRIES = 5


def resolve_storage_url(cli: str | None = None, spec: str | None = None) -> str:
    """``--storage`` beats ``HPO_STORAGE`` beats the study file's ``storage:`` beats the default."""
    return cli or os.environ.get(ENV_STORAGE) or spec or DEFAULT_STORAGE


def mask_url(url: str) -> str:
    """``postgresql://bob:secret@db/x`` → ``postgresql://bob:***@db/x``.

    The password is what SQLAlchemy reads as one (everything up to the ``@``, ``/`` included), and
    a ``password=`` query parameter (libpq takes one) is masked too.
    """
    url = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def supports_heartbeat(url: str) -> bool:
    """Whether Optuna's heartbeat works on this storage (RDB: SQLite, Postgres …; not journal)."""
    return not url.startswith("journal:")


def check_storage_url(url: str) -> None:
    """Raise :class:`StorageError` for a URL no storage can be opened from, without connecting.

    Called before a study starts, so that a mistyped URL is refused before anything (the
    tracking store, a lock file) is created; whether the database answers is only known later.
    """
    shown = mask_url(url)
    if url.startswith("journal:"):
        if not url.removeprefix("journal:").removeprefix("//"):
            raise StorageError(f"storage: a journal URL needs a file path, got '{shown}'")
        return
    if "://" not in url:
        raise StorageError(
            f"storage: invalid URL '{shown}'; expected sqlite:///file.db, "
            "postgresql+psycopg://user:pass@host/db or journal:file.log"
        )
    from sqlalchemy.engine import make_url

    with _storage_errors(url):
        try:
            parsed = make_url(url)
        except ValueError as exc:  # a port that is not a number
            raise StorageError(f"storage: invalid URL '{shown}': {exc}") from None
        # Finds the database's dialect and imports its driver.
        parsed.get_dialect().import_dbapi()


def rdb_backend(storage: BaseStorage) -> RDBStorage | None:
    """The RDB storage under ``storage`` (Optuna wraps one in a cache), or None for another kind
    (journal, in memory): where hpo reads and writes Optuna's tables in SQL itself."""
    from optuna.storages import RDBStorage

    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


def open_storage(
    url: str,
    *,
    heartbeat: HeartbeatSpec | None = None,
    on_stale: StaleTrialCallback | None = None,
) -> BaseStorage:
    """Open (and, on first use, initialise) the storage at ``url``; raise :class:`StorageError`.

    With ``heartbeat`` (RDB storages only; ignored for the journal), running trials record a
    heartbeat every ``heartbeat.interval`` seconds and a trial silent for ``heartbeat.grace``
    seconds is failed, then handed to ``on_stale`` (see :class:`hpo.worker.StaleTrialHandler`).
    """
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    check_storage_url(url)
    if url.startswith("journal:"):
        path = url.removeprefix("journal:").removeprefix("//")
        try:
            return JournalStorage(JournalFileBackend(path))
        except OSError as exc:
            raise StorageError(f"storage: cannot open journal file '{path}': {exc}") from None

    scheme = url.split(":", 1)[0]
    engine_kwargs: dict[str, Any] = {}
    if scheme.startswith("sqlite"):
        # pysqlite opens a transaction right before the first write; "IMMEDIATE" makes that
        # BEGIN IMMEDIATE, which waits (busy timeout) for the write lock instead of upgrading a
        # read lock later, the deadlock SQLite reports at once as "database is locked".
        engine_kwargs["connect_args"] = {
            "timeout": SQLITE_BUSY_TIMEOUT_S,
            "isolation_level": "IMMEDIATE",
        }
    elif scheme.startswith("postgresql"):
        engine_kwargs.update(pool_pre_ping=True, connect_args={"connect_timeout": 10})
    beat: dict[str, Any] = {}
    if heartbeat is not None:
        beat = {
            "heartbeat_interval": heartbeat.interval,
            "grace_period": heartbeat.grace,
            "heartbeat_stale_trial_callback": on_stale,
        }
    with _storage_errors(url), warnings.catch_warnings():
        # heartbeat_interval is marked experimental; it is what we rely on, on purpose.
        warnings.simplefilter("ignore")
        for attempt in range(CREATION_RETRIES + 1):
            try:
                storage = RDBStorage(url, engine_kwargs=engine_kwargs, **beat)
                break
            except Exception as exc:
                if attempt == CREATION_RETRIES or not _lost_creation_race(exc):
                    raise
                # The other process has created the tables, or is about to: the next attempt
                # finds them and creates nothing.
                time.sleep(0.05 * (attempt + 1))
        # A pruning report is one commit per epoch: 9 ms each with SQLite's default fsyncs.
        tune_sqlite_engine(storage.engine)
        return storage


def _lost_creation_race(exc: BaseException) -> bool:
    """Whether opening a new database failed because another process (another hpo command, a
    dashboard, a script of the user's) created Optuna's tables or stamped their version at the
    same moment: "table ... already exists", a unique constraint on ``alembic_version`` or
    ``version_info``. Optuna checks for each before creating it, so two processes can both find
    it missing; the loser's next attempt finds it there."""
    import sqlalchemy.exc

    if isinstance(exc, sqlalchemy.exc.IntegrityError):
        return True
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.ProgrammingError):
        return "already exists" in str(exc.orig).lower()
    return False


@contextmanager
def _storage_errors(url: str) -> Iterator[None]:
    """Turn SQLAlchemy's errors on the database at ``url`` into one-line storage errors."""
    import sqlalchemy.exc

    shown = mask_url(url)
    try:
        yield
    # NoSuchModuleError first: it is a kind of ArgumentError, with a clearer message of its own.
    except sqlalchemy.exc.NoSuchModuleError:
        raise StorageError(f"storage: unsupported database in URL '{shown}'") from None
    except sqlalchemy.exc.ArgumentError as exc:
        raise StorageError(f"storage: invalid URL '{shown}': {_first_line(exc)}") from None
    except ModuleNotFoundError as exc:
        raise StorageError(
            f"storage: the driver for '{shown}' is not installed ({exc.name})"
        ) from None
    except sqlalchemy.exc.OperationalError as exc:
        raise StorageUnavailable(
            f"storage: cannot connect to '{shown}': {_first_line(exc)}"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StorageError(f"storage: '{shown}': {_first_line(exc)}") from None


# -- one process at a time, per study ----------------------------------------------------------
_FILE_LOCKS: dict[str, threading.RLock] = {}
_FILE_LOCK_DEPTH: dict[str, int] = {}
_LOCAL_LOCKS: dict[str, threading.Lock] = {}
_LOCAL_LOCKS_GUARD = threading.Lock()
_LOCK_ENGINES: dict[str, Any] = {}


def _lock_key(name: str) -> int:
    # pg_advisory_lock takes a signed 64-bit key; derive a stable one from the study name.
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class _LockFileError(OSError):
    """The lock file could not be opened (its directory is missing or read-only)."""


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) across processes.

    Re-entrant within a thread, and threads of one process take turns: the file is locked once
    per process, by the outermost holder (two open descriptions of one file would block each
    other even in one process). The operating system releases it if the process dies.
    """
    import fcntl

    key = str(Path(path).absolute())
    with _LOCAL_LOCKS_GUARD:
        local = _FILE_LOCKS.setdefault(key, threading.RLock())
    with local:
        if _FILE_LOCK_DEPTH.get(key, 0):
            _FILE_LOCK_DEPTH[key] += 1
            try:
                yield
            finally:
                _FILE_LOCK_DEPTH[key] -= 1
            return
        try:
            handle = open(path, "a+b")  # noqa: SIM115 - closed below, after the lock
        except OSError as exc:
            raise _LockFileError(exc.errno, exc.strerror, str(path)) from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            _FILE_LOCK_DEPTH[key] = 1
            try:
                yield
            finally:
                _FILE_LOCK_DEPTH[key] = 0
                fcntl.flock(handle, fcntl.LOCK_UN)


def sqlite_lock_file(url: str) -> Path | None:
    """The lock file hpo uses for the SQLite database at ``url`` (``<file>.lock``), or None for
    an in-memory database or any other URL."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1].split("?", 1)[0] if "///" in url else ""
        if path and path != ":memory:":
            return Path(path + ".lock")
    return None


def _lock_file(url: str) -> Path | None:
    """The file to ``flock`` for a SQLite or journal storage (None: in-memory or a server)."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:").removeprefix("//") + ".lock")
    return sqlite_lock_file(url)


class LockHeld:
    """What :func:`study_lock` yields: :meth:`check` says whether the lock is still held."""

    def __init__(self, connection: Any = None, url: str = "") -> None:
        self._connection = connection
        self._url = url
        self._lost = False

    def lost(self) -> bool:
        """Whether the lock was lost at some point (:meth:`check` without raising): after a
        write, whether it was made under the lock all along."""
        if not self._lost:
            with suppress(StorageUnavailable):
                self.check()
        return self._lost

    def check(self) -> None:
        """Raise :class:`StorageUnavailable` if the lock was lost meanwhile.

        A Postgres session lock ends with its connection: when the connection is killed
        (``pg_terminate_backend``, a restart), another worker may take the lock while this one
        still works under it, and both would count the budget and claim a trial (measured: 7
        trials for a budget of 6 while connections were killed every 0.3 s). Checking before a
        write that must be exclusive narrows that window to the write itself; the caller
        retries the whole locked step. A file lock cannot be lost: a no-op there.
        """
        if self._connection is None:
            return
        import sqlalchemy

        try:
            self._connection.execute(sqlalchemy.text("SELECT 1"))
        except Exception as exc:
            self._lost = True
            raise StorageUnavailable(
                f"storage: lost the study lock's connection to {mask_url(self._url)}: "
                f"{type(exc).__name__}"
            ) from None


@contextmanager
def study_lock(url: str, name: str) -> Iterator[LockHeld]:
    """Hold an exclusive, cross-process lock for study ``name`` in the storage at ``url``.

    Postgres: a session advisory lock on its own connection; SQLite and journal files: ``flock``
    on ``<file>.lock``. Both are released by the operating system or the server if the process
    dies, so a killed worker never leaves the study locked. Other databases get a lock within
    this process only (their workers may then overshoot the budget by up to one trial each).
    """
    scheme = url.split(":", 1)[0]
    if scheme.startswith("postgresql"):
        with _postgres_lock(url, _lock_key(name)) as held:
            yield held
        return
    path = _lock_file(url)
    if path is not None:
        try:
            with file_lock(path):
                yield LockHeld()
        except _LockFileError as exc:
            raise StorageError(f"storage: cannot create the lock file '{path}': {exc}") from None
        return
    with _LOCAL_LOCKS_GUARD:
        lock = _LOCAL_LOCKS.setdefault(f"{url}#{name}", threading.Lock())
    with lock:
        yield LockHeld()


@contextmanager
def _postgres_lock(url: str, key: int) -> Iterator[LockHeld]:
    import sqlalchemy

    # The lock is the first use of the database when a study starts: an unreachable server or a
    # bad URL must be a one-line StorageError here too, not a traceback.
    with _storage_errors(url):
        engine = _LOCK_ENGINES.get(url)
        if engine is None:
            # A pool of its own: the lock's connection is never one Optuna is using for a
            # transaction, and pre-ping replaces connections a database restart has closed.
            engine = sqlalchemy.create_engine(
                url, pool_pre_ping=True, pool_size=1, connect_args={"connect_timeout": 10}
            )
            _LOCK_ENGINES[url] = engine
        connection = engine.connect()
    with connection:
        with _storage_errors(url):  # the connection may be lost while it waits for the lock
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            connection.commit()
        try:
            yield LockHeld(connection, url)
        finally:
            _postgres_unlock(connection, key)


def _postgres_unlock(connection: Any, key: int) -> None:
    """Release the advisory lock; if that fails, close the connection instead of raising.

    A session lock lives as long as its connection: when the connection was lost while the lock
    was held (a database restart, ``pg_terminate_backend``), the server has already released it.
    Raising here would turn the finished work under the lock into an error (a worker would then
    claim a second trial); returning the connection to the pool with the lock possibly still
    held would lock every other worker out. Invalidating it closes it for good, which releases
    the lock, and the pool opens a new connection next time.
    """
    import sqlalchemy

    try:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        connection.commit()
    except Exception:
        connection.invalidate()

"""Ending an hpo process once its work is done, without the interpreter's teardown.

At exit CPython frees every module and object one by one. With torch, MLflow, scikit-learn and
Optuna loaded that takes 1.3-2 s (measured on 2 cores: 1.3 s after importing only those
libraries, 2.0 s after a 16-trial study), and every hpo process pays it where someone waits:
the command itself, each ``--workers`` worker (the command waits for them before its report),
and the background sender (a study's end waits for it to exit).

:func:`exit_now` does what a normal exit must and skips the rest: it waits for the threads a
normal exit would wait for, runs the ``atexit`` handlers, closes the database connections (the
last connection to a SQLite database in WAL mode folds the ``-wal`` file back into the database
and removes it, so the ``.db`` file alone holds every result), flushes stdout and stderr, and
ends the process with :func:`os._exit`.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import signal
import sys
import threading
from typing import NoReturn

#: The status CPython exits with when flushing stdout fails at exit (a closed pipe).
FLUSH_FAILED = 120


def exit_code(code: str | int | None) -> int:
    """The process status of ``SystemExit(code)``: None → 0, an int as is, anything else is
    printed on stderr and gives 1 (as the interpreter does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    with contextlib.suppress(OSError, ValueError):
        print(code, file=sys.stderr)
    return 1


def close_databases() -> None:
    """Dispose every SQLAlchemy engine's pool and close every SQLite connection still open in
    this process."""
    engine_type = getattr(sys.modules.get("sqlalchemy.engine.base"), "Engine", None)
    connection_type = getattr(sys.modules.get("sqlite3"), "Connection", None)
    if engine_type is None and connection_type is None:
        return
    engines = []
    connections = []
    for obj in gc.get_objects():
        # type(), not isinstance(): some objects (lazy modules) import on attribute access.
        kind = type(obj)
        if engine_type is not None and issubclass(kind, engine_type):
            engines.append(obj)
        elif kind is connection_type:
            connections.append(obj)
    # Exiting: a connection that will not close (in use by a thread being dropped) is dropped.
    for engine in engines:
        with contextlib.suppress(Exception):
            engine.dispose()  # its pooled connections: Postgres sees a clean goodbye
    for connection in connections:  # checked out, or made outside any pool
        with contextlib.suppress(Exception):
            connection.close()


def _flush() -> bool:
    ok = True
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            ok = False
    return ok


def exit_now(code: str | int | None = 0) -> NoReturn:
    """End the process with ``SystemExit(code)``'s status, skipping the interpreter's teardown
    (see the module's docstring). Where a thread that a normal exit waits for (non-daemon) is
    still running, this is a normal exit instead: ``sys.exit(code)``."""
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    _finish(exit_code(code))


def exit_child(code: str | int | None = 0) -> NoReturn:
    """:func:`exit_now` for a forked child (:mod:`hpo.forked`), which must never return into the
    code it was forked from, whatever happens here (a Ctrl-C while it ends included).

    The threads a normal exit waits for are waited for here, as the interpreter does it: first
    the thread pools are told to stop (MLflow's artifact uploads keep a pool whose idle threads
    would otherwise wait for work for ever), then every non-daemon thread is joined."""
    status = exit_code(code)
    try:
        shutdown = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()
        _finish(status)
    except BaseException:
        pass
    os._exit(status if status else 130)


def _finish(status: int) -> NoReturn:
    # The work is done: a Ctrl-C now would only print a traceback over the exit.
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    atexit._run_exitfuncs()
    close_databases()
    if not _flush() and status == 0:
        status = FLUSH_FAILED
    os._exit(status)

"""``hpo`` commands run in forked children of this process (``hpo study start --workers K``).

A new ``hpo worker`` interpreter spends about 4 s of CPU importing torch, MLflow, Optuna,
scikit-learn and hpo, and its first trial 1 s more importing ``torch._dynamo`` (which any
``torch.optim`` optimizer does). With K workers on a small machine those seconds are paid K times
over, on the cores the trials need. A child forked from this process, once it has imported all
that and loaded the study's data, starts its first trial at once: the memory is shared
copy-on-write and nothing is imported or loaded again.

Forking is only safe in a process that holds nothing a child cannot inherit, so it is used only
where that can be known (:func:`fork_possible`, :func:`fork_refused`), and new interpreters are
started otherwise, as before:

* **torch's OpenMP threads.** A child forked after the parent ran a parallel torch operation
  hangs at its own first one (GNU OpenMP is not fork-safe; measured: a 500 × 500 matmul in the
  parent, then one in the child, waited forever). The parent therefore runs with one torch
  thread (no OpenMP pool is ever started) until the children are forked
  (:func:`single_threaded_torch`). That holds for the ``hpo`` command, a new process; a program
  that calls :func:`hpo.study.run_local_workers` after training in the same process must set
  ``HPO_WORKER_START=spawn`` (whether the pool exists cannot be asked of torch).
* **CUDA.** A process that initialised CUDA cannot fork a child that uses it. Only studies on
  the CPU fork (``train.device: cpu``, or a torch built without CUDA), and only while CUDA is not
  initialised.
* **Threads, connections.** Only the calling thread survives a fork: a lock another thread held
  stays locked in the child. The parent forks from its main thread while no other Python thread
  runs, and before it opens a database or the tracking store (the children open their own).

``HPO_WORKER_START=spawn`` starts new interpreters instead (to compare, or to rule this out).
Measured on 2 cores, 16 reference trials with ``--workers 2``: 16.5-18.6 s forked against
20.6-23.4 s spawned (3 alternating runs each), each worker's first trial 1.1-1.3 s instead of
3.0 s.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import logging
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NoReturn

#: ``fork`` (the default, where possible) or ``spawn`` (always new interpreters).
START_ENV = "HPO_WORKER_START"
#: The process name of a forked child (``ps -e``, ``top``, ``pgrep -x``).
CHILD_NAME = "hpo-worker"

#: What an ``hpo worker`` imports before its first trial ends, imported once here instead of in
#: each worker (``torch._dynamo``: 0.7-1 s, at a process's first optimizer step).
PRELOAD = (
    "hpo.study",
    "hpo.worker",
    "hpo.objective",
    "hpo.tracking.runs",
    "hpo.tracking.finisher",
    "hpo.tracking.models",
    "hpo.tracking.plots",
    "hpo.tracking.pt2_cache",
    "hpo.tracking.champion",
    "hpo.serving",
    "mlflow.tracking",
    "mlflow.pytorch",
    "mlflow.pyfunc",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "optuna.storages",
    "optuna.storages._rdb.models",
    "sqlalchemy.dialects.sqlite",
    "alembic.command",
    "torch._dynamo",
    "torch.export",
    "torch._functorch.partitioners",
    "torch._inductor.decomposition",
)


def fork_possible(device: str) -> bool:
    """Whether workers for a study on ``device`` (the study file's ``train.device``) may be
    forked here: Linux, not turned off with ``HPO_WORKER_START=spawn``, and a device that cannot
    be CUDA (``cpu``, or any device on a torch built without CUDA)."""
    if os.environ.get(START_ENV, "fork").strip().lower() == "spawn":
        return False
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False
    import torch

    return device == "cpu" or torch.version.cuda is None


def fork_refused() -> str | None:
    """Why this process cannot fork a worker now (None: it can)."""
    if threading.current_thread() is not threading.main_thread():
        return "not the main thread"
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        return f"threads running: {', '.join(others)}"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialised"
    return None


@contextmanager
def single_threaded_torch(enabled: bool = True) -> Iterator[None]:
    """One torch thread while the block runs: no OpenMP thread pool is started that a forked
    child would inherit broken (see the module's docstring). The caller sets the count it wants
    afterwards."""
    if not enabled:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    except BaseException:
        torch.set_num_threads(before)
        raise


def preload() -> None:
    """Import what a worker needs (:data:`PRELOAD`), so that forked workers start with it."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)


class ForkedProcess:
    """A forked child, with the part of :class:`subprocess.Popen`'s interface that
    :mod:`hpo.worker` uses: ``pid``, ``returncode``, :meth:`poll`, :meth:`wait` (which raises
    :class:`subprocess.TimeoutExpired`), :meth:`send_signal`, :meth:`terminate`, :meth:`kill`."""

    def __init__(self, pid: int, args: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        # A descriptor that becomes readable when the child exits: wait() sleeps on it instead
        # of polling (Linux 5.3+; polling every 10 ms otherwise).
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(pid)

    def poll(self) -> int | None:
        """The exit status (negative: the signal that ended it), or None while it runs."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is lost
                pid, status = self.pid, 255 << 8
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                if self._pidfd is not None:
                    os.close(self._pidfd)
                    self._pidfd = None
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            if self._pidfd is not None:
                select.select([self._pidfd], [], [], left)
            else:
                time.sleep(0.01 if left is None else min(0.01, left))
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def fork_hpo(
    args: Sequence[str], *, stdout: int, stderr: int, env: Mapping[str, str] | None = None
) -> ForkedProcess:
    """Run ``hpo ARGS`` in a child forked from this process, its standard output and error on
    the descriptors ``stdout`` and ``stderr``, with ``env`` added to its environment.

    The caller has checked :func:`fork_refused`. The child is what ``python -m hpo ARGS`` would
    be (same ``sys.argv``, the default signal handlers, its own random state, none of this
    process's exit handlers) except that everything imported and loaded here is there already.
    """
    for stream in (sys.stdout, sys.stderr):  # else their buffers would be written twice
        with contextlib.suppress(Exception):
            stream.flush()
    pid = os.fork()
    if pid:
        return ForkedProcess(pid, ["hpo", *args])
    _run_child(list(args), stdout, stderr, dict(env or {}))


def _run_child(args: list[str], stdout: int, stderr: int, env: dict[str, str]) -> NoReturn:
    """In the child: become ``python -m hpo ARGS``, run it, and end without ever returning into
    the parent's code that forked it."""
    from hpo.quick_exit import exit_child

    status: str | int | None = 1
    try:
        # Its command line is the parent's: the name `ps -e`, `top` and `pgrep` show tells it
        # apart (the kernel keeps 15 characters). First, so that it is wrong as briefly as can be.
        with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
            comm.write(CHILD_NAME)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        _streams_on_standard_fds()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # The parent's exit handlers are about the parent's resources.
        atexit._clear()
        atexit.register(logging.shutdown)
        os.environ.update(env)
        import hpo

        # As `python -m hpo` has it (MLflow tags runs with it). Not imported: that would run it.
        sys.argv = [os.path.join(os.path.dirname(hpo.__file__), "__main__.py"), *args]
        # A new interpreter seeds these from the OS; forked children would share the parent's.
        random.seed()
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            numpy.random.seed()
        from hpo.cli import main

        try:
            main(args=args, prog_name="hpo")
            status = 0
        except SystemExit as exc:  # click always ends with one
            status = exc.code
    except BaseException:
        import traceback

        with contextlib.suppress(Exception):
            traceback.print_exc()
        status = 1
    try:
        exit_child(status)
    finally:
        os._exit(1)  # exit_child does not return; this line is the guarantee


def _streams_on_standard_fds() -> None:
    """``sys.stdout`` and ``sys.stderr`` writing to descriptors 1 and 2, as in a new interpreter
    (the parent's may write elsewhere: a test runner's capture, a redirection in Python)."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = getattr(sys, name)
        try:
            ok = stream.fileno() == fd
        except (AttributeError, OSError, ValueError):
            ok = False
        if not ok:
            replacement = io.TextIOWrapper(
                io.FileIO(fd, "w", closefd=False),
                encoding="utf-8",
                errors="backslashreplace" if fd == 2 else "strict",
                line_buffering=fd == 2,
            )
            setattr(sys, name, replacement)

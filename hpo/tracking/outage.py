"""A tracking store that is away for a while: which failures to retry, and how.

MLflow's HTTP client retries by itself (7 times over about 4 minutes by default, for every
method): a dead server stalls the caller for minutes, and a ``POST`` whose answer was lost is sent
again, which logs its metric points twice. hpo's per-trial calls make one attempt each
(:func:`single_attempt`) and retry here instead, where it is known what a repeat would do:

* *unambiguous* failures left the store untouched (connection refused, HTTP 429 or 503): the call
  can simply be made again;
* *ambiguous* failures may have been applied (the connection dropped after the request was sent,
  a timeout, HTTP 500/502/504): before a non-idempotent call (create a run, log metric points)
  is repeated, the caller checks what the store already has.

Anything else (a 4xx answer, a disk that is full or read-only for a local store) is permanent:
retrying cannot help, the caller reports it.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

#: MLflow's own retry count, read by its HTTP client at every request.
MLFLOW_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"

#: Messages of a failure that never reached the server, or that it refused before doing anything.
_UNAMBIGUOUS = (
    "NewConnectionError",
    "Connection refused",
    "ConnectTimeout",
    "Failed to establish a new connection",
    "Name or service not known",
    "too many 429 error responses",
    "too many 503 error responses",
    "TEMPORARILY_UNAVAILABLE",
    "REQUEST_LIMIT_EXCEEDED",
    "RESOURCE_EXHAUSTED",
)
#: Messages of a failure after the request may have been applied.
_AMBIGUOUS = (
    "too many 500 error responses",
    "too many 502 error responses",
    "too many 504 error responses",
    "Read timed out",
    "ReadTimeout",
    "RemoteDisconnected",
    "Connection aborted",
    "Connection reset",
    "ConnectionResetError",
    "ProtocolError",
    "IncompleteRead",
    "timeout exception",
    "BrokenPipe",
    "Max retries exceeded",
)
_UNAMBIGUOUS_CODES = ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED")
_AMBIGUOUS_STATUS = (500, 502, 504)
_UNAMBIGUOUS_STATUS = (429, 503)


@dataclass(frozen=True)
class Failure:
    """How a failed call to the tracking store may be retried."""

    transient: bool
    #: The call may have been applied although it failed.
    ambiguous: bool


def classify(exc: BaseException) -> Failure:
    """Look through ``exc`` and its causes for what kind of failure it is."""
    import sqlalchemy.exc

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = _http_status(current)
        if status in _UNAMBIGUOUS_STATUS:
            return Failure(True, False)
        if status in _AMBIGUOUS_STATUS:
            return Failure(True, True)
        code = getattr(current, "error_code", None)
        if isinstance(code, str) and code in _UNAMBIGUOUS_CODES:
            return Failure(True, False)
        text = f"{type(current).__name__}: {current}"
        if any(marker in text for marker in _UNAMBIGUOUS):
            return Failure(True, False)
        if any(marker in text for marker in _AMBIGUOUS):
            return Failure(True, True)
        if isinstance(current, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            # A database store that is away (Postgres restarting) or busy (SQLite locked).
            return Failure(True, True)
        if isinstance(current, ConnectionError | TimeoutError):
            return Failure(True, True)
        current = current.__cause__ or current.__context__
    return Failure(False, False)


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    text = str(exc)
    marker = "failed with error code "
    if marker in text:
        digits = text.split(marker, 1)[1][:3]
        if digits.isdigit():
            return int(digits)
    return None


_GISTS = (
    (re.compile(r"too many (\d{3}) error responses"), "HTTP {0}"),
    (re.compile(r"failed with error code (\d{3})"), "HTTP {0}"),
    (re.compile(r"Connection refused"), "connection refused"),
    (re.compile(r"Read timed out|timeout exception"), "timed out"),
    (re.compile(r"RemoteDisconnected|Connection aborted|Connection reset"), "connection dropped"),
    (re.compile(r"Name or service not known|nodename nor servname"), "unknown host"),
)


def gist(message: str, limit: int = 300) -> str:
    """A short reason for an MLflow HTTP failure (``API request to URL failed with exception
    HTTPConnectionPool(…): Max retries exceeded … Connection refused`` → ``API request to URL:
    connection refused``); other messages cut at ``limit`` characters."""
    if message.startswith("API request to"):
        for pattern, reason in _GISTS:
            found = pattern.search(message)
            if found:
                url = message.split()[3] if message.split()[2:3] == ["to"] else ""
                if url == "endpoint":
                    url = message.split()[4]
                return f"API request to {url}: {reason.format(*found.groups())}"
    return message if len(message) <= limit else message[: limit - 1] + "…"


_SINGLE_LOCK = threading.Lock()
_single_depth = 0
_single_before: str | None = None


@contextlib.contextmanager
def single_attempt() -> Iterator[None]:
    """MLflow HTTP calls in this block make one attempt (the caller decides about retrying).

    MLflow reads its retry count from the environment, which the whole process shares: blocks
    that overlap in several threads (a trial's run opened in the background while the trial
    writes its curves) keep it at 0 until the last of them ends, which restores it.
    """
    global _single_depth, _single_before
    with _SINGLE_LOCK:
        if _single_depth == 0:
            _single_before = os.environ.get(MLFLOW_RETRIES_ENV)
            os.environ[MLFLOW_RETRIES_ENV] = "0"
        _single_depth += 1
    try:
        yield
    finally:
        with _SINGLE_LOCK:
            _single_depth -= 1
            if _single_depth == 0:
                if _single_before is None:
                    os.environ.pop(MLFLOW_RETRIES_ENV, None)
                else:
                    os.environ[MLFLOW_RETRIES_ENV] = _single_before


class OutageTooLong(Exception):
    """The store stayed away longer than the caller was willing to wait."""


@dataclass
class Backoff:
    """Retry delays: 0.5 s doubling to ``ceiling``, for at most ``limit`` seconds in all.

    ``clock`` and ``sleep`` are injectable for tests. ``on_wait`` hears about each wait (what,
    the failure, seconds waited so far), e.g. to print one warning.
    """

    limit: float
    first: float = 0.5
    ceiling: float = 10.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def call(
        self,
        fn: Callable[[], T],
        *,
        check: Callable[[], T | None] | None = None,
        on_wait: Callable[[BaseException, float], None] | None = None,
    ) -> T:
        """``fn()``, retried while it fails transiently and the limit allows.

        After an ambiguous failure, ``check()`` (if given) runs before ``fn`` is repeated: a
        result other than None means the failed call was applied after all, and is returned.
        """
        start = self.clock()
        delay = self.first
        ambiguous = False
        while True:
            try:
                if ambiguous and check is not None:
                    done = check()
                    if done is not None:
                        return done
                return fn()
            except Exception as exc:
                failure = classify(exc)
                if not failure.transient:
                    raise
                ambiguous = ambiguous or failure.ambiguous
                waited = self.clock() - start
                if waited + delay > self.limit:
                    raise OutageTooLong(str(exc)) from exc
                if on_wait is not None:
                    on_wait(exc, waited)
                self.sleep(delay)
                delay = min(delay * 2, self.ceiling)

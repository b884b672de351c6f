"""Which failures of the tracking store are retried, and how (hpo.tracking.outage)."""

from __future__ import annotations

import os

import pytest
import requests
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import REQUEST_LIMIT_EXCEEDED, RESOURCE_DOES_NOT_EXIST

from hpo.errors import TrackingError
from hpo.tracking.outage import (
    MLFLOW_RETRIES_ENV,
    Backoff,
    Failure,
    OutageTooLong,
    classify,
    single_attempt,
)

URL = "http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch"


def wrapped(cause: BaseException) -> TrackingError:
    """As hpo raises them: a TrackingError from MLflow's error."""
    try:
        raise TrackingError("tracking_uri: logging failed") from cause
    except TrackingError as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        # never reached the server, or refused before doing anything: repeat freely
        (
            MlflowException(
                f"API request to {URL} failed with exception HTTPConnectionPool(host='127.0.0.1',"
                " port=5000): Max retries exceeded with url: /api (Caused by NewConnectionError("
                "'Failed to establish a new connection: [Errno 111] Connection refused'))"
            ),
            Failure(True, False),
        ),
        (
            MlflowException(
                f"API request to {URL} failed with exception HTTPConnectionPool(...): Max "
                "retries exceeded with url: /api (Caused by ResponseError('too many 503 error "
                "responses'))"
            ),
            Failure(True, False),
        ),
        (MlflowException("slow down", error_code=REQUEST_LIMIT_EXCEEDED), Failure(True, False)),
        # may have been applied: check before repeating what is not idempotent
        (
            MlflowException(
                f"API request to {URL} failed with exception ('Connection aborted.', "
                "RemoteDisconnected('Remote end closed connection without response'))"
            ),
            Failure(True, True),
        ),
        (
            MlflowException(
                f"API request to endpoint {URL} failed with error code 502 != 200. "
                "Response body: 'bad gateway'"
            ),
            Failure(True, True),
        ),
        (
            sqlalchemy.exc.OperationalError("INSERT", {}, Exception("server closed")),
            Failure(True, True),
        ),
        # permanent: retrying cannot help
        (MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST), Failure(False, False)),
        (PermissionError(13, "Permission denied"), Failure(False, False)),
        (OSError(28, "No space left on device"), Failure(False, False)),
        (ValueError("a bug"), Failure(False, False)),
    ],
)
def test_failures_are_classified_through_their_causes(
    error: BaseException, expected: Failure
) -> None:
    assert classify(error) == expected
    assert classify(wrapped(error)) == expected


def test_an_http_error_is_classified_by_its_status() -> None:
    response = requests.Response()
    response.status_code = 429
    assert classify(requests.HTTPError("429", response=response)) == Failure(True, False)
    response.status_code = 500
    assert classify(requests.HTTPError("500", response=response)) == Failure(True, True)
    response.status_code = 403
    assert classify(requests.HTTPError("403", response=response)) == Failure(False, False)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def backoff(limit: float) -> tuple[Backoff, Clock]:
    clock = Clock()
    return Backoff(limit=limit, clock=lambda: clock.now, sleep=clock.sleep), clock


REFUSED = ConnectionRefusedError("Connection refused")
DROPPED = ConnectionResetError("Connection reset by peer")


def test_transient_failures_are_retried_with_growing_delays() -> None:
    policy, clock = backoff(limit=60)
    outcomes: list[BaseException | str] = [wrapped(REFUSED)] * 4 + ["ok"]
    waits: list[float] = []

    def call() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert policy.call(call, on_wait=lambda exc, waited: waits.append(waited)) == "ok"
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0]
    assert waits == [0.0, 0.5, 1.5, 3.5]


def test_a_permanent_failure_is_raised_at_once() -> None:
    policy, clock = backoff(limit=60)

    def call() -> None:
        raise wrapped(PermissionError(13, "Permission denied"))

    with pytest.raises(TrackingError):
        policy.call(call)
    assert clock.sleeps == []


def test_an_outage_longer_than_the_limit_gives_up_with_the_cause() -> None:
    policy, clock = backoff(limit=5)

    def call() -> None:
        raise wrapped(REFUSED)

    with pytest.raises(OutageTooLong) as caught:
        policy.call(call)
    assert sum(clock.sleeps) <= 5
    assert isinstance(caught.value.__cause__, TrackingError)


def test_after_an_ambiguous_failure_the_check_decides() -> None:
    policy, _ = backoff(limit=60)
    calls: list[str] = []

    def create() -> str:
        calls.append("create")
        raise wrapped(DROPPED)  # the store made it, but the answer was lost

    def created() -> str | None:
        calls.append("check")
        return "run-1"

    assert policy.call(create, check=created) == "run-1"
    assert calls == ["create", "check"]


def test_the_check_is_skipped_after_unambiguous_failures() -> None:
    policy, _ = backoff(limit=60)
    calls: list[str] = []
    outcomes = [wrapped(REFUSED), "run-2"]

    def create() -> str:
        calls.append("create")
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert policy.call(create, check=lambda: calls.append("check")) == "run-2"  # type: ignore[func-returns-value]
    assert calls == ["create", "create"]


def test_single_attempt_switches_mlflow_retries_off_and_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(MLFLOW_RETRIES_ENV, "3")
    with single_attempt():
        assert os.environ[MLFLOW_RETRIES_ENV] == "0"
    assert os.environ[MLFLOW_RETRIES_ENV] == "3"
    monkeypatch.delenv(MLFLOW_RETRIES_ENV)
    with single_attempt():
        assert os.environ[MLFLOW_RETRIES_ENV] == "0"
    assert MLFLOW_RETRIES_ENV not in os.environ


def test_single_attempt_blocks_overlapping_in_two_threads_restore_retries_once_both_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trial's run opened in a thread while the trial writes its curves: the first block to
    end must not switch retries back on under the other, nor the last leave them off."""
    import threading

    monkeypatch.setenv(MLFLOW_RETRIES_ENV, "3")
    entered, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def other() -> None:
        with single_attempt():
            entered.set()
            release.wait(5)
            seen.append(os.environ[MLFLOW_RETRIES_ENV])

    thread = threading.Thread(target=other)
    with single_attempt():
        thread.start()
        assert entered.wait(5)
    assert os.environ[MLFLOW_RETRIES_ENV] == "0"  # the other block is still on
    release.set()
    thread.join(5)
    assert seen == ["0"]
    assert os.environ[MLFLOW_RETRIES_ENV] == "3"

"""Errors a user can cause, each rendered by the CLI as one line with exit code 2.

Every message names where the problem is (file, field), the rule, and the offending value, so the
user can fix it without reading a traceback. Anything that is *not* an :class:`HpoError` is a bug in
hpo and is shown with its traceback.
"""

from __future__ import annotations


class HpoError(Exception):
    """Base class of every user-facing error."""

    exit_code = 2


class SpecError(HpoError):
    """A study file is malformed or names something that does not exist."""


class DataError(HpoError):
    """A data set cannot be loaded or is unusable (missing file, missing target column, …)."""


class StorageError(HpoError):
    """The Optuna storage is unreachable, the URL is invalid, or the study cannot be used."""


class StorageUnavailable(StorageError):
    """The storage's database did not answer (refused, dropped or timed out the connection).

    A :class:`StorageError` where a command starts (one line, exit 2); a running worker waits and
    retries instead (:func:`hpo.worker._through_outage`), since the database may come back.
    """


class TrackingError(HpoError):
    """The MLflow tracking store is unreachable or refuses a request."""


class NotStarted(TrackingError):
    """A trial could not start because its MLflow run could not be created (the tracking store
    stayed away): nothing was trained, and the worker queues the trial again and stops."""


class DeviceError(HpoError):
    """A requested compute device is not available."""

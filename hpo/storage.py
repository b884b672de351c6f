"""Storage URLs → Optuna storages.

* ``sqlite:///hpo.db`` (the default, in the working directory): embedded, no set-up. A busy timeout
  lets several local processes share it instead of failing with "database is locked".
* ``postgresql+psycopg://user:pass@host/db`` (the team server): ``pool_pre_ping`` so a database
  restart costs a reconnect, not a crashed worker.
* ``journal:path/to/file.log``: Optuna's append-only journal file, fastest for local parallel runs.

Passwords in URLs are masked wherever a URL is shown (:func:`mask_url`).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from hpo.errors import StorageError

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

DEFAULT_STORAGE = "sqlite:///hpo.db"
ENV_STORAGE = "HPO_STORAGE"
#: Seconds SQLite waits for a lock held by another process before giving up.
SQLITE_BUSY_TIMEOUT_S = 60


def resolve_storage_url(cli: str | None = None, spec: str | None = None) -> str:
    """``--storage`` beats ``HPO_STORAGE`` beats the study file's ``storage:`` beats the default."""
    return cli or os.environ.get(ENV_STORAGE) or spec or DEFAULT_STORAGE


def mask_url(url: str) -> str:
    """``postgresql://bob:secret@db/x`` → ``postgresql://bob:***@db/x``."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_storage(url: str) -> BaseStorage:
    """Open (and, on first use, initialise) the storage at ``url``; raise :class:`StorageError`."""
    import sqlalchemy.exc
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    shown = mask_url(url)
    if url.startswith("journal:"):
        path = url.removeprefix("journal:").removeprefix("//")
        if not path:
            raise StorageError(f"storage: a journal URL needs a file path, got '{shown}'")
        try:
            return JournalStorage(JournalFileBackend(path))
        except OSError as exc:
            raise StorageError(f"storage: cannot open journal file '{path}': {exc}") from None

    scheme = url.split(":", 1)[0] if "://" in url else ""
    if not scheme:
        raise StorageError(
            f"storage: invalid URL '{shown}'; expected sqlite:///file.db, "
            "postgresql+psycopg://user:pass@host/db or journal:file.log"
        )
    engine_kwargs: dict[str, Any] = {}
    if scheme.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif scheme.startswith("postgresql"):
        engine_kwargs.update(pool_pre_ping=True, connect_args={"connect_timeout": 10})
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs)
    except sqlalchemy.exc.ArgumentError as exc:
        raise StorageError(f"storage: invalid URL '{shown}': {_first_line(exc)}") from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise StorageError(f"storage: unsupported database in URL '{shown}'") from None
    except ModuleNotFoundError as exc:
        raise StorageError(
            f"storage: the driver for '{shown}' is not installed ({exc.name})"
        ) from None
    except sqlalchemy.exc.OperationalError as exc:
        raise StorageError(f"storage: cannot connect to '{shown}': {_first_line(exc)}") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StorageError(f"storage: '{shown}': {_first_line(exc)}") from None

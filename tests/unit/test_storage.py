"""Storage URLs: defaults, precedence, masking, and clear errors for bad or dead storages."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import optuna
import pytest

from hpo.errors import StorageError, StorageUnavailable
from hpo.storage import (
    DEFAULT_STORAGE,
    _lock_key,
    file_lock,
    mask_url,
    open_storage,
    resolve_storage_url,
    study_lock,
)
from tests.conftest import PG_ADMIN_DSN
from tests.faults import FaultProxy


def test_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    assert resolve_storage_url() == DEFAULT_STORAGE == "sqlite:///hpo.db"
    assert resolve_storage_url(spec="sqlite:///s.db") == "sqlite:///s.db"
    monkeypatch.setenv("HPO_STORAGE", "sqlite:///env.db")
    assert resolve_storage_url(spec="sqlite:///s.db") == "sqlite:///env.db"
    assert resolve_storage_url("sqlite:///cli.db", "sqlite:///s.db") == "sqlite:///cli.db"


def test_password_is_masked() -> None:
    assert (
        mask_url("postgresql+psycopg://bob:s3cret@db:5432/hpo")
        == "postgresql+psycopg://bob:***@db:5432/hpo"
    )
    assert mask_url("sqlite:///hpo.db") == "sqlite:///hpo.db"
    # SQLAlchemy reads everything up to the "@" as the password, "/" included.
    assert mask_url("postgresql://bob:a/b:c@db/hpo") == "postgresql://bob:***@db/hpo"
    assert mask_url("http://bob:pw@mlflow:5000") == "http://bob:***@mlflow:5000"
    assert mask_url("http://mlflow:5000/x") == "http://mlflow:5000/x"
    assert mask_url("postgresql://db/hpo?user=bob&password=pw&x=1") == (
        "postgresql://db/hpo?user=bob&password=***&x=1"
    )


def test_sqlite_and_journal_work(tmp_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path}/a.db", f"journal:{tmp_path}/a.log"):
        storage = open_storage(url)
        study = optuna.create_study(storage=storage, study_name="s")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert len(optuna.load_study(study_name="s", storage=open_storage(url)).trials) == 2


def open_at_once(url: str, n: int = 4) -> list[str]:
    """Open the storage at ``url`` from ``n`` threads released together; their errors."""
    barrier, errors = threading.Barrier(n), []

    def open_it() -> None:
        barrier.wait()
        try:
            study = optuna.create_study(storage=open_storage(url), load_if_exists=True)
            study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=open_it) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_a_new_sqlite_database_opened_by_several_at_once_works_for_all(tmp_path: Path) -> None:
    """Another hpo command, a dashboard or the user's script creates Optuna's tables at the same
    moment: whoever loses that race finds them on its next attempt (before the fix, every round
    failed one opener with "table ... already exists" or a UNIQUE constraint)."""
    for round_ in range(5):
        url = f"sqlite:///{tmp_path}/r{round_}.db"
        assert open_at_once(url) == []
        assert len(optuna.get_all_study_names(open_storage(url))) == 4


def test_a_new_postgres_database_opened_by_several_at_once_works_for_all(
    postgres_url: str,
) -> None:
    assert open_at_once(postgres_url) == []


def test_a_database_error_that_is_not_a_creation_race_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy.exc
    from optuna.storages import RDBStorage

    calls = []

    def broken(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        raise sqlalchemy.exc.OperationalError("CREATE TABLE", {}, Exception("disk I/O error"))

    monkeypatch.setattr(RDBStorage, "__init__", broken)
    with pytest.raises(StorageUnavailable, match="disk I/O error"):
        open_storage(f"sqlite:///{tmp_path}/x.db")
    assert len(calls) == 1


@pytest.mark.parametrize("url", ["nonsense", "foo://bar/baz", "journal:"])
def test_invalid_urls_are_one_clear_error(url: str) -> None:
    with pytest.raises(StorageError, match="storage:"):
        open_storage(url)


def test_unreachable_postgres_fails_fast_and_masks_the_password() -> None:
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        open_storage("postgresql+psycopg://bob:s3cret@127.0.0.1:1/nothing")
    assert time.monotonic() - start < 15
    assert "cannot connect" in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.postgres
def test_postgres_storage(postgres_url: str) -> None:
    study = optuna.create_study(storage=open_storage(postgres_url), study_name="pg")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    again = optuna.load_study(study_name="pg", storage=open_storage(postgres_url))
    assert len(again.trials) == 3


def test_an_unreachable_database_is_an_outage_a_bad_url_is_not() -> None:
    # Workers wait through an outage (hpo.worker._through_outage) but not through a mistake.
    with pytest.raises(StorageUnavailable):
        open_storage("postgresql+psycopg://bob:s3cret@127.0.0.1:1/nothing")
    with pytest.raises(StorageError) as info:
        open_storage("foo://bar/baz")
    assert not isinstance(info.value, StorageUnavailable)


def _terminate_others(url: str) -> int:
    """``pg_terminate_backend`` every other connection to the database of ``url``."""
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (url.rsplit("/", 1)[1],),
        ).fetchall()
    return len(rows)


def _lock_is_free(url: str, name: str) -> bool:
    import psycopg

    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as other:
        free = other.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(name),)).fetchone()
        other.execute("SELECT pg_advisory_unlock_all()")
    return bool(free and free[0])


@pytest.mark.postgres
def test_a_study_lock_whose_connection_was_killed_releases_cleanly(postgres_url: str) -> None:
    with study_lock(postgres_url, "s"):
        assert not _lock_is_free(postgres_url, "s")
        assert _terminate_others(postgres_url) >= 1  # the lock's connection, among others
    # The unlock failed on the dead connection: no error (the work under the lock is done), and
    # neither the lock nor a broken connection is left behind.
    assert _lock_is_free(postgres_url, "s")
    with study_lock(postgres_url, "s"):
        assert not _lock_is_free(postgres_url, "s")
    assert _lock_is_free(postgres_url, "s")


@pytest.mark.postgres
def test_a_failed_unlock_on_a_live_connection_closes_it(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any failed unlock: the connection is closed for good, which releases the lock, rather than
    # going back to the pool still holding it (every other worker would wait forever).
    import hpo.storage

    real = hpo.storage._postgres_unlock

    def failing(connection: Any, key: int) -> None:
        def execute(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("unlock failed")

        monkeypatch.setattr(connection, "execute", execute)
        real(connection, key)

    monkeypatch.setattr(hpo.storage, "_postgres_unlock", failing)
    with study_lock(postgres_url, "s"):
        pass
    assert _lock_is_free(postgres_url, "s")


@pytest.mark.postgres
def test_a_worker_claims_through_a_postgres_outage(postgres_url: str) -> None:
    # The study lock is the first thing a claim touches: a refused connection there is waited
    # for like any other outage, not a dead worker.
    from hpo.worker import _through_outage

    server = urlsplit(PG_ADMIN_DSN)
    with FaultProxy(server.hostname or "127.0.0.1", server.port or 5432) as proxy:
        url = proxy.via(postgres_url)
        proxy.cut()
        threading.Timer(2.0, proxy.restore).start()
        start = time.monotonic()

        def claim() -> str:
            with study_lock(url, "s"):
                return "claimed"

        assert _through_outage("asking for a trial", claim, limit=30) == "claimed"
        assert time.monotonic() - start >= 1.5
    assert _lock_is_free(postgres_url, "s")


@pytest.mark.postgres
def test_a_lost_study_lock_is_noticed_before_an_exclusive_write(postgres_url: str) -> None:
    from hpo.errors import StorageUnavailable

    with study_lock(postgres_url, "s") as held:
        held.check()  # held: nothing to say
        assert _terminate_others(postgres_url) >= 1
        # The server released the lock with the connection: another worker may hold it now.
        with pytest.raises(StorageUnavailable, match="lost the study lock"):
            held.check()
    with study_lock(postgres_url, "s") as held:
        held.check()  # a new connection, the lock held again


def test_the_file_lock_is_reentrant_in_a_thread_and_exclusive_across_threads(
    tmp_path: Path,
) -> None:
    """The study lock and the tracking store's lock may be one file (both stores in one SQLite
    database): the inner holder must not wait for the outer one; another thread must."""
    path = tmp_path / "x.db.lock"
    order: list[str] = []
    with file_lock(path):
        with file_lock(path):  # would block for ever on a second flock
            order.append("inner")

        def other() -> None:
            with file_lock(path):
                order.append("other")

        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.2)
        order.append("outer ends")
    thread.join(5)
    assert order == ["inner", "outer ends", "other"]


def test_a_file_lock_cannot_be_lost(tmp_path: Path) -> None:
    with study_lock(f"sqlite:///{tmp_path}/s.db", "s") as held:
        held.check()

"""Shared fixtures: an isolated working directory, and a fresh Postgres database per test."""

from __future__ import annotations

import atexit
import os
import random
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# hpo's cache (the tracking store's tables: hpo.tracking.store_seed) in a directory of this test
# process, not the user's: made once per process, used by the hpo commands the tests start too.
_CACHE = tempfile.mkdtemp(prefix="hpo-test-cache-")
os.environ["HPO_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)

PG_ADMIN_DSN = os.environ.get("HPO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(autouse=True)
def _spool_and_sender(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test has its own spool, and sends trial runs inline (in the trial's thread).

    The background sender is a process per worker (seconds of imports): the suite's many short
    studies would pay that for nothing. Tests of the background sender set
    ``HPO_FINISHER=background`` themselves.
    """
    monkeypatch.setenv("HPO_SPOOL_DIR", str(tmp_path / ".hpo-spool"))
    monkeypatch.setenv("HPO_FINISHER", "inline")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same global random state (Python's, NumPy's and torch's),
    whatever ran before it in its process: with ``pytest -n`` the order differs from run to run,
    and a test that draws unseeded numbers must not pass or fail by that order."""
    random.seed(0)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(0)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test in an empty directory so default stores (hpo.db, mlflow.db) land there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPO_STORAGE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty database on the machine's Postgres, dropped afterwards.

    Skips when no server answers, except on CI, where the server is part of the machine and its
    absence is a failure.
    """
    import psycopg

    name = f"hpo_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Postgres at {PG_ADMIN_DSN}: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

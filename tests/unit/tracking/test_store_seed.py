"""New SQLite tracking stores from the template of their tables: the same store MLflow makes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import mlflow.store.db.utils
import pytest
from mlflow.tracking import MlflowClient

from hpo.tracking import store_seed
from hpo.tracking.runs import open_client


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv(store_seed.CACHE_ENV, str(directory))
    return directory


def contents(path: Path) -> dict[str, object]:
    """The database's schema and rows, times and the store's own paths left out."""
    db = sqlite3.connect(path)
    try:
        # Each definition's lines in order: MLflow's own migrations write a table's constraints
        # in one order for a process's first store and in another for its next ones.
        schema = sorted(
            (kind, name, tuple(sorted(line.strip(" ,\t") for line in (sql or "").splitlines())))
            for kind, name, sql in db.execute("SELECT type, name, sql FROM sqlite_master")
        )
        tables = [name for kind, name, _ in schema if kind == "table"]
        rows = {t: sorted(map(repr, db.execute(f'SELECT * FROM "{t}"'))) for t in tables}
        rows["experiments"] = sorted(
            db.execute("SELECT experiment_id, name, lifecycle_stage, workspace FROM experiments")
        )
        locations = [r[0] for r in db.execute("SELECT artifact_location FROM experiments")]
    finally:
        db.close()
    return {"schema": schema, "rows": rows, "locations": locations}


def test_a_seeded_store_is_the_store_mlflow_makes(cache: Path, tmp_path: Path) -> None:
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    theirs.mkdir()
    ours.mkdir()
    MlflowClient(f"sqlite:///{theirs / 'mlflow.db'}").search_experiments()
    open_client(f"sqlite:///{ours / 'mlflow.db'}")
    assert any(cache.glob("mlflow-*-sqlite-tables.db"))  # the template was made ...
    mine, mlflows = contents(ours / "mlflow.db"), contents(theirs / "mlflow.db")
    assert mine == mlflows
    # ... and the Default experiment is the store's own, made where MLflow makes it.
    assert (
        MlflowClient(f"sqlite:///{ours / 'mlflow.db'}").get_experiment("0").artifact_location
        == MlflowClient(f"sqlite:///{theirs / 'mlflow.db'}").get_experiment("0").artifact_location
    )


def test_the_next_new_store_runs_no_migration(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_client(f"sqlite:///{tmp_path / 'first.db'}")

    def migrations(*args: object) -> None:
        raise AssertionError("MLflow's migrations ran for a seeded store")

    monkeypatch.setattr(mlflow.store.db.utils, "_initialize_tables", migrations)
    client = open_client(f"sqlite:///{tmp_path / 'second.db'}")
    experiment_id = client.create_experiment("e")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "m", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.0}


def test_a_store_that_exists_is_never_replaced(cache: Path, tmp_path: Path) -> None:
    path = tmp_path / "mlflow.db"
    client = open_client(f"sqlite:///{path}")
    client.create_experiment("kept")
    assert not store_seed.seed(path)
    assert open_client(f"sqlite:///{path}").get_experiment_by_name("kept") is not None


def test_without_a_usable_cache_mlflow_makes_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "a file"
    blocked.write_text("not a directory")
    monkeypatch.setenv(store_seed.CACHE_ENV, str(blocked / "cache"))
    path = tmp_path / "mlflow.db"
    assert not store_seed.seed(path)
    assert not path.exists() and [p.name for p in tmp_path.iterdir()] == ["a file"]
    client = open_client(f"sqlite:///{path}")
    assert client.get_experiment("0").name == "Default"


def test_the_cache_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(store_seed.CACHE_ENV, str(tmp_path / "c"))
    assert store_seed.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(store_seed.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert store_seed.cache_dir() == tmp_path / "x" / "hpo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store_seed.cache_dir() == tmp_path / "home" / ".cache" / "hpo"

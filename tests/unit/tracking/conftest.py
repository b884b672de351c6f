"""A local MLflow store per test, copied from one initialised once (creating the tables costs ~2 s)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hpo.tracking.runs import StudyTracker


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates the tables
    return path


@pytest.fixture
def tracking_uri(workdir: Path, template_db: Path) -> str:
    """``sqlite:///<tmp>/mlflow.db``; the test runs in ``<tmp>``, so nothing lands in the repo."""
    shutil.copy(template_db, workdir / "mlflow.db")
    return f"sqlite:///{workdir}/mlflow.db"


@pytest.fixture
def tracker(tracking_uri: str) -> StudyTracker:
    """A tracker of study ``demo`` with its parent run open."""
    tracker = StudyTracker(tracking_uri, "demo")
    tracker.check_connection()
    tracker.ensure_parent_run(None, tags={"hpo.spec_hash": "abc"}, params={"trials": 3})
    return tracker

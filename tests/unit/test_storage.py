"""Storage URLs: defaults, precedence, masking, and clear errors for bad or dead storages."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest

from hpo.errors import StorageError
from hpo.storage import DEFAULT_STORAGE, mask_url, open_storage, resolve_storage_url


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


def test_sqlite_and_journal_work(tmp_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path}/a.db", f"journal:{tmp_path}/a.log"):
        storage = open_storage(url)
        study = optuna.create_study(storage=storage, study_name="s")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert len(optuna.load_study(study_name="s", storage=open_storage(url)).trials) == 2


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

"""A running trial's values and attributes: the pruner sees them at once, the storage gets them
together (hpo.trial_writes)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.trial_writes import report, write_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)


def storages(tmp_path: Path) -> dict[str, str | optuna.storages.BaseStorage]:
    from optuna.storages.journal import JournalFileBackend

    return {
        "sqlite": f"sqlite:///{tmp_path}/o.db",
        "journal": optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "j.log"))),
        "memory": optuna.storages.InMemoryStorage(),
    }


@pytest.mark.parametrize("kind", ["sqlite", "journal", "memory"])
def test_the_pruner_decides_as_after_trial_report(tmp_path: Path, kind: str) -> None:
    """Same history, same decisions: with report() and with Trial.report()."""
    decisions: dict[str, list[bool]] = {}
    for way in ("optuna", "hpo"):
        (tmp_path / way).mkdir()
        study = optuna.create_study(
            storage=storages(tmp_path / way)[kind],
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
            direction="maximize",
        )
        for curve in ([0.5, 0.6, 0.7, 0.8], [0.5, 0.7, 0.8, 0.9]):
            trial = study.ask()
            for step, value in enumerate(curve):
                trial.report(value, step)
            study.tell(trial, curve[-1])
        trial = study.ask()
        seen: list[bool] = []
        for step, value in enumerate([0.4, 0.45, 0.5, 0.95]):
            if way == "optuna":
                trial.report(value, step)
            else:
                assert report(trial, step, value)
            seen.append(trial.should_prune())
        decisions[way] = seen
    assert decisions["hpo"] == decisions["optuna"] == [False, True, True, False]


def test_a_step_is_reported_once(tmp_path: Path) -> None:
    study = optuna.create_study()
    trial = study.ask()
    assert report(trial, 3, 0.5)
    assert not report(trial, 3, 0.9)
    assert trial._cached_frozen_trial.intermediate_values == {3: 0.5}


@pytest.mark.parametrize("kind", ["sqlite", "journal", "memory"])
def test_values_and_attributes_are_written_together(tmp_path: Path, kind: str) -> None:
    study = optuna.create_study(storage=storages(tmp_path)[kind])
    trial = study.ask()
    for step in range(5):
        report(trial, step, step / 10)
    if kind == "sqlite":  # nothing in the database yet (in-memory storages share the dict)
        assert study._storage.get_trial(trial._trial_id).intermediate_values == {}
    write_trial(
        study._storage,
        trial._trial_id,
        user_attrs={"val_f1": 0.5, "model_uri": "models:/m-1"},
        intermediate_values=trial._cached_frozen_trial.intermediate_values,
    )
    stored = study._storage.get_trial(trial._trial_id)
    assert stored.intermediate_values == {s: s / 10 for s in range(5)}
    assert stored.user_attrs == {"val_f1": 0.5, "model_uri": "models:/m-1"}
    study.tell(trial, state=TrialState.PRUNED)
    # a pruned trial's value is its last report, as with Trial.report
    assert study.trials[0].value == pytest.approx(0.4)


def test_a_finished_trial_takes_nothing(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db")
    trial = study.ask()
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        write_trial(
            study._storage, trial._trial_id, user_attrs={"a": 1}, intermediate_values={0: 0.5}
        )
    stored = study._storage.get_trial(trial._trial_id)
    assert stored.user_attrs == {} and stored.intermediate_values == {}


def test_one_transaction_on_sqlite(tmp_path: Path) -> None:
    """One commit for all of a trial's values and attributes, not one per row."""
    import sqlalchemy

    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db")
    trial = study.ask()
    backend = study._storage._backend  # type: ignore[attr-defined]
    commits: list[int] = []
    sqlalchemy.event.listen(backend.engine, "commit", lambda conn: commits.append(1))
    write_trial(
        study._storage,
        trial._trial_id,
        user_attrs={f"a{i}": i for i in range(9)},
        intermediate_values={s: 0.1 * s for s in range(20)},
    )
    assert len(commits) == 1


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_attributes_are_one_upsert_that_replaces_values(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """All of a trial's attributes in one statement; written again, they replace the values
    (the trial's final write repeats the live ones) and add the new ones."""
    import sqlalchemy

    url = (
        request.getfixturevalue("postgres_url") if kind == "postgres" else storages(tmp_path)[kind]
    )
    study = optuna.create_study(storage=url)
    trial = study.ask()
    backend = study._storage._backend  # type: ignore[attr-defined]
    statements: list[str] = []
    sqlalchemy.event.listen(
        backend.engine,
        "before_cursor_execute",
        lambda conn, cursor, sql, *args: statements.append(sql),
    )
    write_trial(study._storage, trial._trial_id, user_attrs={f"a{i}": i for i in range(9)})
    writes = [s for s in statements if "trial_user_attributes" in s]
    assert len(writes) == 1 and writes[0].lstrip().upper().startswith("INSERT")
    write_trial(study._storage, trial._trial_id, user_attrs={"a0": "again", "z": [1, 2]})
    stored = study._storage.get_trial(trial._trial_id)
    assert stored.user_attrs == {**{f"a{i}": i for i in range(1, 9)}, "a0": "again", "z": [1, 2]}

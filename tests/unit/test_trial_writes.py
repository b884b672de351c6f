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


def counted_commits(study: optuna.Study) -> list[int]:
    """A list that grows by one with each commit on the study's SQLite storage."""
    import sqlalchemy

    commits: list[int] = []
    backend = study._storage._backend  # type: ignore[attr-defined]
    sqlalchemy.event.listen(backend.engine, "commit", lambda conn: commits.append(1))
    return commits


def test_one_transaction_on_sqlite(tmp_path: Path) -> None:
    """One commit for all of a trial's values and attributes, not one per row."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db")
    trial = study.ask()
    commits = counted_commits(study)
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


class _Recording(optuna.samplers.RandomSampler):
    """Records what ``after_trial`` is told."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.told: list[tuple[int, TrialState, list[float] | None, dict[str, object]]] = []

    def after_trial(self, study, trial, state, values):  # type: ignore[no-untyped-def]
        self.told.append((trial.number, state, values, dict(trial.user_attrs)))


FINISHES = {
    "complete": (TrialState.COMPLETE, [0.9], [0.4, 0.8]),
    "pruned": (TrialState.PRUNED, None, [0.4, 0.3]),
    "pruned_nan_last": (TrialState.PRUNED, None, [0.4, float("nan")]),
    "pruned_no_report": (TrialState.PRUNED, None, []),
    "fail": (TrialState.FAIL, None, [0.4]),
    "complete_nan": (TrialState.COMPLETE, [float("nan")], [0.4]),
    "complete_two_objectives": (TrialState.COMPLETE, [0.9, 3.0], []),
    "pruned_infinite": (TrialState.PRUNED, None, [float("inf"), float("-inf")]),
    "complete_infinite": (TrialState.COMPLETE, [float("inf")], [0.4, 0.5, 0.4]),
}


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "sqlite_orm", "journal"])
@pytest.mark.parametrize("case", sorted(FINISHES))
def test_finish_trial_ends_a_trial_as_tell_does(
    tmp_path: Path,
    kind: str,
    case: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same trial, same end: hpo's finish_trial (one transaction on an RDB storage: a few
    upserts on SQLite and Postgres, Optuna's models where the database has no upsert) and
    write_trial + Study.tell store the same trial, tell the sampler the same, and return what
    the storage then holds."""
    import math
    import warnings

    from hpo import trial_writes
    from hpo.trial_writes import finish_trial

    if kind == "sqlite_orm":
        monkeypatch.setattr(trial_writes, "_has_upsert", lambda backend: False)
    postgres = request.getfixturevalue("postgres_url") if kind == "postgres" else None

    state, values, reports = FINISHES[case]
    directions = ["maximize", "minimize"] if case == "complete_two_objectives" else ["maximize"]
    stored, told, returned = {}, {}, {}
    for way in ("optuna", "hpo"):
        (tmp_path / way).mkdir()
        sampler = _Recording()
        storage = postgres or storages(tmp_path / way)[kind.removesuffix("_orm")]
        study = optuna.create_study(storage=storage, sampler=sampler, directions=directions)
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr("worker", "here")  # written while it ran
        attrs = {"run": "r1", "family": "mlp"}
        values_by_step = dict(enumerate(reports))
        for step, value in values_by_step.items():
            report(trial, step, value)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if way == "optuna":
                write_trial(
                    study._storage,
                    trial._trial_id,
                    user_attrs=attrs,
                    intermediate_values=values_by_step,
                )
                if state == TrialState.COMPLETE:
                    study.tell(trial, values)
                else:
                    study.tell(trial, state=state)
                frozen = study._storage.get_trial(trial._trial_id)
            else:
                frozen = finish_trial(
                    study,
                    trial,
                    state,
                    values,
                    user_attrs=attrs,
                    intermediate_values=values_by_step,
                )
        assert bool(caught) == (case == "complete_nan"), [str(w.message) for w in caught]
        again = optuna.load_study(study_name=study.study_name, storage=study._storage)
        (kept,) = again.get_trials(deepcopy=False)
        stored[way] = kept
        told[way] = sampler.told
        returned[way] = frozen
    for trial in (stored["hpo"], returned["hpo"]):
        assert trial.state == stored["optuna"].state
        assert trial.values == stored["optuna"].values or (
            # NaN != NaN: a pruned trial whose last report is NaN has no value either way
            trial.values is None and stored["optuna"].values is None
        )
        assert trial.params == stored["optuna"].params == {"x": trial.params["x"]}
        assert trial.user_attrs == stored["optuna"].user_attrs
        assert trial.intermediate_values.keys() == stored["optuna"].intermediate_values.keys()
        for step, value in stored["optuna"].intermediate_values.items():
            mine = trial.intermediate_values[step]
            assert mine == value or (math.isnan(mine) and math.isnan(value))
        assert trial.datetime_complete is not None
    assert told["hpo"] == told["optuna"]
    assert returned["hpo"].datetime_complete == stored["hpo"].datetime_complete


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_finish_trial_is_one_transaction_and_refuses_a_finished_trial(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """A trial's end is one commit of a few statements (not one per reported step), and a trial
    that was failed meanwhile (as stale, by another worker) keeps its state and takes nothing."""
    import sqlalchemy

    from hpo.trial_writes import finish_trial

    url = (
        request.getfixturevalue("postgres_url") if kind == "postgres" else storages(tmp_path)[kind]
    )
    study = optuna.create_study(storage=url)
    trial = study.ask()
    commits = counted_commits(study)
    statements: list[str] = []
    sqlalchemy.event.listen(
        study._storage._backend.engine,  # type: ignore[attr-defined]
        "before_cursor_execute",
        lambda conn, cursor, sql, *args: statements.append(sql),
    )
    finish_trial(
        study,
        trial,
        TrialState.COMPLETE,
        [1.0],
        user_attrs={f"a{i}": i for i in range(9)},
        intermediate_values={s: 0.1 * s for s in range(20)},
    )
    assert len(commits) == 1
    # The end, then one upsert each for the reports, the attributes and the value (SQLite
    # opens its transaction with the first write; Postgres is also asked its version once).
    writes = [s for s in statements if not s.lstrip().lower().startswith(("select", "show"))]
    assert len(writes) == 4, writes
    assert writes[0].lstrip().upper().startswith("UPDATE TRIALS")
    assert study._storage.get_trial(trial._trial_id).intermediate_values == {
        s: 0.1 * s for s in range(20)
    }
    # Failed as stale by another worker meanwhile: nothing of this end is written.
    other = study.ask()
    study._storage.set_trial_state_values(other._trial_id, TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        finish_trial(study, other, TrialState.COMPLETE, [2.0], user_attrs={"a": 1})
    kept = study._storage.get_trial(other._trial_id)
    assert kept.state == TrialState.FAIL and kept.values is None and kept.user_attrs == {}

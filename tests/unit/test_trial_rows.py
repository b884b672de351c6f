"""A study's trials as rows read in SQL, and only what changed (hpo.trial_rows)."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from hpo import worker
from hpo.trial_rows import SYSTEM_ATTRS, TrialRows

optuna.logging.set_verbosity(optuna.logging.WARNING)


def same(rows: list, trials: list[optuna.trial.FrozenTrial]) -> None:  # type: ignore[type-arg]
    """``rows`` say of each trial what ``get_trials`` says."""
    assert [r.number for r in rows] == [t.number for t in trials]
    for row, trial in zip(rows, trials, strict=True):
        assert row.trial_id == trial._trial_id
        assert row.state == trial.state
        assert row.datetime_complete == trial.datetime_complete
        if trial.values is None:
            assert row.values is None
        else:
            assert row.values is not None and len(row.values) == len(trial.values)
            for mine, theirs in zip(row.values, trial.values, strict=True):
                assert mine == theirs or (math.isnan(mine) and math.isnan(theirs))
        wanted = {k: v for k, v in trial.system_attrs.items() if k in SYSTEM_ATTRS}
        assert row.system_attrs == wanted


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_rows_are_what_get_trials_reads_and_follow_changes(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        request.getfixturevalue("postgres_url")
        if kind == "postgres"
        else f"sqlite:///{tmp_path}/o.db"
    )
    study = optuna.create_study(storage=url, directions=["maximize", "minimize"])
    rows = TrialRows(study)
    assert rows.read() == []
    done = study.ask()
    study.tell(done, [0.5, float("inf")])
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    running = study.ask()
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    worker.requeue(study, study.trials[failed.number], max_retries=None)  # WAITING, retry attrs
    same(rows.read(), study.get_trials())
    statements: list[str] = []
    engine = study._storage._backend.engine  # type: ignore[attr-defined]
    sqlalchemy.event.listen(
        engine, "before_cursor_execute", lambda conn, cur, sql, *a: statements.append(sql)
    )
    # The running trial ends, the queued one runs, another worker gives a trial back unrun.
    study.tell(running, [0.7, -1.0])
    queued = study.ask()
    assert queued.number == 4
    over = study.ask()
    study._storage.set_trial_system_attr(over._trial_id, worker.OVER_BUDGET_ATTR, True)
    study._storage.set_trial_state_values(over._trial_id, TrialState.FAIL)
    statements.clear()
    read = rows.read()
    assert len(statements) == 2  # the trials with their values, their system attributes
    same(read, study.get_trials())
    assert rows.user_attr(done._trial_id, "x") is None
    study._storage.set_trial_user_attr(queued._trial_id, "mlflow_run_id", "abc")
    assert rows.user_attr(queued._trial_id, "mlflow_run_id") == "abc"


def test_the_budget_counts_the_same_from_rows(tmp_path: Path) -> None:
    """budget_usage with rows and with get_trials: same counts, as trials change."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db")
    rows = TrialRows(study)
    assert set(SYSTEM_ATTRS) == {
        worker.RETRY_HISTORY_ATTR,
        worker.RECOVERED_FROM_ATTR,
        worker.OVER_BUDGET_ATTR,
    }
    steps = [
        lambda: study.tell(study.ask(), 1.0),
        lambda: study.ask(),  # running
        lambda: study.tell(study.ask(), state=TrialState.FAIL),
        lambda: worker.requeue(study, study.trials[-1], max_retries=None),
        lambda: study.tell(study.ask(), 2.0),  # the retry runs
        lambda: study.tell(study.ask(), state=TrialState.PRUNED),
    ]
    for step in steps:
        step()
        assert worker.budget_usage(study, rows) == worker.budget_usage(study)
    assert worker.budget_usage(study, rows) == (4, 1)

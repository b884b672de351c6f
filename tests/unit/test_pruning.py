"""The cached median pruner decides as Optuna's does, with one read of the trials per trial."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from hpo.pruning import CompletedTrialsCache, cached


def curves(rng: np.random.Generator, n: int, steps: int = 12) -> np.ndarray:
    # Noisy rising accuracy curves of different heights.
    return np.cumsum(rng.random((n, steps)) * rng.random((n, 1)), axis=1)


PRUNERS = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3),
    "percentile": lambda: optuna.pruners.PercentilePruner(
        25.0, n_startup_trials=3, n_warmup_steps=2, interval_steps=3, n_min_trials=4
    ),
}


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # Optuna's own, on NaN steps
@pytest.mark.parametrize("kind", sorted(PRUNERS))
@pytest.mark.parametrize("direction", ["maximize", "minimize"])
@pytest.mark.parametrize("gaps", [False, True])
@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_same_decisions_as_optunas_pruner(
    direction: str, kind: str, gaps: bool, storage: str, tmp_path: Path
) -> None:
    """``gaps``: some steps are not reported, some values are NaN (a diverging epoch).
    ``storage``: completed trials are read with ``get_trials`` in memory, in SQL on SQLite."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(0)
    plain = PRUNERS[kind]()
    pruner = cached(PRUNERS[kind]())
    assert isinstance(pruner, CompletedTrialsCache)
    url = f"sqlite:///{tmp_path}/o.db" if storage == "sqlite" else None
    study = optuna.create_study(storage=url, direction=direction, pruner=pruner)
    decisions = 0
    sign = 1.0 if direction == "maximize" else -1.0  # improving curves either way
    for curve in sign * curves(rng, 25):
        trial = study.ask()
        for step, value in enumerate(curve):
            if gaps and rng.random() < 0.2:
                continue
            if gaps and rng.random() < 0.1:
                value = float("nan")
            trial.report(float(value), step)
            frozen = study._storage.get_trial(trial._trial_id)
            expected = plain.prune(study, frozen)
            assert trial.should_prune() == expected
            decisions += expected
            if expected:
                break
        study.tell(trial, state=optuna.trial.TrialState.PRUNED if expected else None,
                   values=None if expected else float(curve[-1]))  # fmt: skip
    assert decisions > 0  # the comparison covered both answers


def test_completed_trials_are_read_once_per_trial_and_refreshed() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = CompletedTrialsCache(optuna.pruners.MedianPruner(n_warmup_steps=0), refresh_seconds=60)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for value in (0.1, 0.2, 0.3):
        study.enqueue_trial({})
        study.optimize(lambda t, v=value: (t.report(v, 0), v)[1], n_trials=1)
    reads = 0
    real = study.get_trials

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        return real(*args, **kwargs)

    study.get_trials = counting  # type: ignore[method-assign]
    trial = study.ask()
    for step in range(10):
        trial.report(0.5, step)
        trial.should_prune()
    assert reads == 1
    # A trial another worker completes meanwhile is seen after the refresh interval.
    pruner.refresh_seconds = 0.0
    trial.report(0.5, 10)
    trial.should_prune()
    assert reads == 2


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_only_trials_completed_since_are_read(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A trial's first decision reads the values of the trials completed since the last read,
    those of other workers included, and nothing else; the values read are the stored ones
    (NaN and infinities too)."""
    import math

    import sqlalchemy

    from hpo.pruning import completed_since

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = (
        request.getfixturevalue("postgres_url")
        if kind == "postgres"
        else f"sqlite:///{tmp_path}/o.db"
    )
    study = optuna.create_study(storage=url, direction="maximize")
    other = optuna.load_study(study_name=study.study_name, storage=url)  # another worker
    curves = {0: [0.1, float("nan")], 1: [float("inf"), float("-inf"), 0.3], 2: []}
    ids = {}
    for number, curve in curves.items():
        trial = other.ask()
        for step, value in enumerate(curve):
            trial.report(value, step)
        other.tell(trial, 0.5)
        ids[number] = trial._trial_id
    running = other.ask()
    running.report(0.9, 0)  # not complete: not read
    read = completed_since(study, set())
    assert read.keys() == set(ids.values())
    for number, curve in curves.items():
        got = read[ids[number]]
        assert list(got) == list(range(len(curve)))
        for value, stored in zip(curve, got.values(), strict=True):
            assert stored == value or (math.isnan(stored) and math.isnan(value))
    statements: list[str] = []
    engine = study._storage._backend.engine  # type: ignore[attr-defined]
    sqlalchemy.event.listen(
        engine, "before_cursor_execute", lambda conn, cur, sql, *a: statements.append(sql)
    )
    assert completed_since(study, set(read)) == {}
    assert len(statements) == 1  # the ids only
    other.tell(running, 0.7)
    assert completed_since(study, set(read)) == {running._trial_id: {0: 0.9}}

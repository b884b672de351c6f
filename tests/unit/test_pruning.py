"""The cached median pruner decides as Optuna's does, with one read of the trials per trial."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from hpo.pruning import CompletedTrialsCache, cached


def curves(rng: np.random.Generator, n: int, steps: int = 12) -> np.ndarray:
    # Noisy rising accuracy curves of different heights.
    return np.cumsum(rng.random((n, steps)) * rng.random((n, 1)), axis=1)


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_same_decisions_as_the_median_pruner(direction: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(0)
    plain = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3)
    pruner = cached(optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3))
    assert isinstance(pruner, CompletedTrialsCache)
    study = optuna.create_study(direction=direction, pruner=pruner)
    decisions = 0
    sign = 1.0 if direction == "maximize" else -1.0  # improving curves either way
    for curve in sign * curves(rng, 25):
        trial = study.ask()
        for step, value in enumerate(curve):
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

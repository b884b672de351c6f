"""The cached median pruner decides as Optuna's does, with one read of the trials per trial."""

from __future__ import annotations

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
def test_same_decisions_as_optunas_pruner(direction: str, kind: str, gaps: bool) -> None:
    """``gaps``: some steps are not reported, some values are NaN (a diverging epoch)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(0)
    plain = PRUNERS[kind]()
    pruner = cached(PRUNERS[kind]())
    assert isinstance(pruner, CompletedTrialsCache)
    study = optuna.create_study(direction=direction, pruner=pruner)
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

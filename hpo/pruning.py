"""Pruning without a database round trip per epoch.

Optuna's median (percentile) pruner reads every COMPLETE trial of the study from the storage on
each ``should_prune`` call, before it even checks its warm-up: with an RDB storage that is 9
queries, 8.5 ms per epoch measured on SQLite here (170 ms of a 20-epoch trial, a third of the
reference trial's training time). Completed trials do not change while a trial trains, except
that other workers may add some; :class:`CompletedTrialsCache` reads them at a trial's first
``should_prune`` and again only every :data:`REFRESH_SECONDS`, so the pruner sees the same
trials as before, at most a few seconds late, for one read per trial instead of one per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Container, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from optuna.study import Study, StudyDirection

#: How stale the cached list of completed trials may get while a trial trains (other workers
#: finish trials meanwhile).
REFRESH_SECONDS = 5.0


class CompletedTrialsCache(BasePruner):
    """Wraps a pruner that reads only the study's direction and its COMPLETE trials (median,
    percentile); see the module docstring."""

    def __init__(self, inner: BasePruner, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.inner = inner
        self.refresh_seconds = refresh_seconds
        self._trial: int | None = None
        self._read_at = 0.0
        self._view: _CompletedView | None = None

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        """The inner pruner's decision, on the cached completed trials."""
        now = time.monotonic()
        if (
            self._view is None
            or self._trial != trial.number
            or now - self._read_at >= self.refresh_seconds
        ):
            completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            self._view = _CompletedView(study, completed)
            self._trial, self._read_at = trial.number, now
        return self.inner.prune(self._view, trial)  # type: ignore[arg-type]


class _CompletedView:
    """The part of a :class:`optuna.Study` the percentile pruner reads, with cached trials."""

    def __init__(self, study: Study, completed: Sequence[FrozenTrial]) -> None:
        self._study = study
        self._completed = list(completed)
        self.direction: StudyDirection = study.direction

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        if states is not None and tuple(states) == (TrialState.COMPLETE,):  # type: ignore[arg-type]
            return list(self._completed)
        return self._study.get_trials(deepcopy=deepcopy, states=states)

    def __getattr__(self, name: str) -> Any:
        # Anything else the pruner might need comes from the real study.
        return getattr(self._study, name)


def cached(pruner: BasePruner) -> BasePruner:
    """``pruner`` behind :class:`CompletedTrialsCache` when it only reads completed trials."""
    if isinstance(pruner, optuna.pruners.PercentilePruner):  # MedianPruner is one
        return CompletedTrialsCache(pruner)
    return pruner

"""Pruning without a database round trip per epoch.

Optuna's median (percentile) pruner reads every COMPLETE trial of the study from the storage on
each ``should_prune`` call, before it even checks its warm-up: with an RDB storage that is 9
queries, 8.5 ms per epoch measured on SQLite here (170 ms of a 20-epoch trial, a third of the
reference trial's training time). A completed trial's values never change, and only other
workers add completed trials while a trial trains: :class:`CompletedTrialsCache` keeps the
values it has read and, at a trial's first ``should_prune`` and then every
:data:`REFRESH_SECONDS`, reads only the trials completed since (:func:`completed_since`: two
small queries on an RDB storage). The pruner sees the same trials as Optuna's at the start of
each trial, and other workers' trials that complete while it trains at most a few seconds late.

The percentile pruner's decision is then made here, as Optuna 5.0 makes it, from a matrix of the
completed trials' values by step (the percentiles of every step computed together, once per
read that found new trials) instead of a scan of every completed trial and a ``numpy`` call per
epoch. ``tests/unit/test_pruning.py`` holds it to Optuna's decisions.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Container, Mapping
from typing import TYPE_CHECKING

import numpy as np
import optuna
from optuna.pruners import BasePruner, PercentilePruner
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from optuna.study import Study, StudyDirection

#: How late a trial's pruning may see the trials other workers complete while it trains.
REFRESH_SECONDS = 5.0


class CompletedTrialsCache(BasePruner):
    """Wraps a percentile (or median) pruner: the same decisions, on the completed trials' values
    kept between calls; see the module docstring."""

    def __init__(self, inner: PercentilePruner, refresh_seconds: float = REFRESH_SECONDS) -> None:
        self.inner = inner
        self.refresh_seconds = refresh_seconds
        self._trial: int | None = None
        self._read_at = 0.0
        self._view: _CompletedView | None = None

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        """The inner pruner's decision, on the cached completed trials."""
        now = time.monotonic()
        view = self._view
        if view is None or view.study_id != study._study_id:
            view = self._view = _CompletedView(study._study_id, study.direction)
            self._trial = None
        if self._trial != trial.number or now - self._read_at >= self.refresh_seconds:
            view.add(completed_since(study, view.known))
            self._trial, self._read_at = trial.number, now
        return _percentile_prune(self.inner, view, trial)


def completed_since(study: Study, known: Container[int]) -> dict[int, dict[int, float]]:
    """The intermediate values (step → value) of the study's COMPLETE trials, by trial id,
    except the trials in ``known``: a completed trial's values do not change, so what was read
    once is kept.

    On an RDB storage this is two queries of Optuna's tables (the completed trials' ids, then
    the values of the new ones): ``Study.get_trials`` loaded every trial still running and every
    trial new since its last read through the ORM, with all its parameters and attributes (6 ms
    per trial of the reference study on SQLite). Other storages are read with ``get_trials``.
    """
    from hpo.storage import rdb_backend

    backend = rdb_backend(study._storage)
    if backend is None:
        return {
            t._trial_id: dict(t.intermediate_values)
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t._trial_id not in known
        }
    import sqlalchemy
    from optuna.storages._rdb import models

    trials = models.TrialModel.__table__
    model = models.TrialIntermediateValueModel
    values = model.__table__
    with backend.engine.connect() as connection:
        ids = [
            trial_id
            for (trial_id,) in connection.execute(
                sqlalchemy.select(trials.c.trial_id).where(
                    trials.c.study_id == study._study_id, trials.c.state == TrialState.COMPLETE
                )
            )
            if trial_id not in known
        ]
        new: dict[int, dict[int, float]] = {trial_id: {} for trial_id in ids}
        for start in range(0, len(ids), _IDS_PER_QUERY):
            rows = connection.execute(
                sqlalchemy.select(
                    values.c.trial_id,
                    values.c.step,
                    values.c.intermediate_value,
                    values.c.intermediate_value_type,
                ).where(values.c.trial_id.in_(ids[start : start + _IDS_PER_QUERY]))
            )
            for trial_id, step, value, kind in rows:
                new[trial_id][step] = model.stored_repr_to_intermediate_value(value, kind)
    return new


#: Trial ids per ``IN (…)`` list (SQLite allows 32,766 parameters a statement, older ones 999).
_IDS_PER_QUERY = 500


class _CompletedView:
    """The completed trials' values, as a matrix that grows as trials complete (trials × steps),
    and their percentiles at every step, computed when first asked after trials were added."""

    def __init__(self, study_id: int, direction: StudyDirection) -> None:
        self.study_id = study_id
        self.direction = direction
        self.known: set[int] = set()
        self._columns: dict[int, int] = {}
        self._values = np.empty((0, 0))
        self._reported = np.zeros(0, dtype=int)
        self._percentiles: dict[float, np.ndarray] = {}

    @property
    def n_completed(self) -> int:
        return len(self.known)

    def add(self, trials: Mapping[int, Mapping[int, float]]) -> None:
        """Add completed trials (trial id → step → value)."""
        if not trials:
            return
        self.known.update(trials)
        for steps in trials.values():
            for step in steps:
                self._columns.setdefault(step, len(self._columns))
        rows, width = self._values.shape
        block = np.full((rows + len(trials), len(self._columns)), np.nan)
        block[:rows, :width] = self._values
        reported = np.zeros(len(self._columns), dtype=int)
        reported[:width] = self._reported
        for row, steps in enumerate(trials.values(), start=rows):
            for step, value in steps.items():
                column = self._columns[step]
                block[row, column] = value
                reported[column] += 1
        self._values, self._reported = block, reported
        self._percentiles.clear()

    def at_step(self, step: int, percentile: float) -> tuple[int, float]:
        """How many completed trials reported ``step`` (NaN values included), and the
        ``percentile`` of their values there (NaNs ignored; NaN if all are)."""
        column = self._columns.get(step)
        if column is None:
            return 0, math.nan
        by_step = self._percentiles.get(percentile)
        if by_step is None:
            # Every step's at once: one numpy call per added trials, not one per epoch.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a step where every value is NaN
                by_step = np.nanpercentile(self._values, percentile, axis=0)
            self._percentiles[percentile] = by_step
        return int(self._reported[column]), float(by_step[column])


def _percentile_prune(pruner: PercentilePruner, view: _CompletedView, trial: FrozenTrial) -> bool:
    """``PercentilePruner.prune`` of Optuna 5.0 (optuna is pinned to 5.0.x), on ``view``."""
    from optuna.study import StudyDirection

    n_trials = view.n_completed
    if n_trials == 0 or n_trials < pruner._n_startup_trials:
        return False
    step = trial.last_step
    if step is None:
        return False
    warmup = pruner._n_warmup_steps
    if step < warmup:
        return False
    # The first step reported in its pruning interval (Optuna's _is_first_in_interval_step).
    nearest_lower = (step - warmup) // pruner._interval_steps * pruner._interval_steps + warmup
    second_last = max((s for s in trial.intermediate_values if s != step), default=-1)
    if second_last >= nearest_lower:
        return False
    maximize = view.direction == StudyDirection.MAXIMIZE
    own = [v for v in trial.intermediate_values.values() if not math.isnan(v)]
    if not own:
        return True  # every value reported so far is NaN
    best = max(own) if maximize else min(own)
    percentile = 100 - pruner._percentile if maximize else pruner._percentile
    reported, p = view.at_step(step, percentile)
    if reported < pruner._n_min_trials or math.isnan(p):
        return False
    return best < p if maximize else best > p


def cached(pruner: BasePruner) -> BasePruner:
    """``pruner`` behind :class:`CompletedTrialsCache` when it is a percentile (or median)
    pruner, which reads only the study's direction and its completed trials' values."""
    if isinstance(pruner, optuna.pruners.PercentilePruner):  # MedianPruner is one
        return CompletedTrialsCache(pruner)
    return pruner

"""A study's trials as plain rows (number, state, end time, values, a few system attributes), read
in SQL from an RDB storage, and only what changed since the last read.

A worker reads its study between trials: to count the budget before each claim
(:func:`hpo.worker.budget_usage`) and for the parent run's summary (:class:`hpo.study.
_ParentSummary`). ``Study.get_trials`` reads, through Optuna's cache, every trial that was still
running at its last read and every newer trial, each through the ORM with all its parameters,
attributes and intermediate values: 2-6 ms per read in the reference study on SQLite, more with
many workers (their running trials are read again each time). These readers need none of that.
:class:`TrialRows` keeps the rows it has read and asks only for trials newer than the newest it
knows and for those that were unfinished (one query, plus one for their system attributes): a
finished trial's row never changes again.

Optuna's tables are read as Optuna 5.0 writes them (``pyproject.toml`` pins it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState

if TYPE_CHECKING:
    import optuna

#: System attributes :class:`TrialRows` reads (the budget's: :mod:`hpo.worker`).
SYSTEM_ATTRS = ("retry_history", "hpo.recovered_from", "hpo.over_budget")


@dataclass
class TrialRow:
    """What the worker's readers need of one trial."""

    trial_id: int
    number: int
    state: TrialState
    datetime_complete: datetime | None
    #: The objective values, by objective; None if the trial has none (as ``FrozenTrial``).
    values: list[float] | None = None
    #: The :data:`SYSTEM_ATTRS` the trial has.
    system_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float | None:
        """The first objective's value (a single-objective study's ``FrozenTrial.value``)."""
        return self.values[0] if self.values else None


class TrialRows:
    """The trials of one study in an RDB storage, kept between reads; see the module docstring."""

    def __init__(self, study: optuna.Study) -> None:
        from hpo.storage import rdb_backend

        backend = rdb_backend(study._storage)
        if backend is None:
            raise TypeError("TrialRows reads an RDB storage")
        self._engine = backend.engine
        self._study_id = study._study_id
        self._rows: dict[int, TrialRow] = {}
        self._newest = -1
        self._unfinished: set[int] = set()

    @staticmethod
    def of(study: optuna.Study) -> TrialRows | None:
        """A reader of ``study``'s trials, or None for a storage that is not RDB."""
        from hpo.storage import rdb_backend

        return TrialRows(study) if rdb_backend(study._storage) is not None else None

    def read(self) -> list[TrialRow]:
        """Every trial of the study as it is now, by number."""
        import sqlalchemy
        from optuna.storages._rdb import models

        trials = models.TrialModel.__table__
        values = models.TrialValueModel.__table__
        attrs = models.TrialSystemAttributeModel.__table__
        changed = sqlalchemy.or_(
            trials.c.trial_id > self._newest, trials.c.trial_id.in_(sorted(self._unfinished))
        )
        mine = sqlalchemy.and_(trials.c.study_id == self._study_id, changed)
        with self._engine.connect() as connection:
            rows = connection.execute(
                sqlalchemy.select(
                    trials.c.trial_id,
                    trials.c.number,
                    trials.c.state,
                    trials.c.datetime_complete,
                    values.c.objective,
                    values.c.value,
                    values.c.value_type,
                )
                .select_from(trials.outerjoin(values, values.c.trial_id == trials.c.trial_id))
                .where(mine)
            ).all()
            extra = connection.execute(
                sqlalchemy.select(attrs.c.trial_id, attrs.c.key, attrs.c.value_json)
                .select_from(attrs.join(trials, trials.c.trial_id == attrs.c.trial_id))
                .where(mine, attrs.c.key.in_(SYSTEM_ATTRS))
            ).all()
        read: dict[int, TrialRow] = {}
        objectives: dict[int, dict[int, float]] = {}
        for trial_id, number, state, complete, objective, value, kind in rows:
            if trial_id not in read:
                read[trial_id] = TrialRow(trial_id, number, state, complete)
            if objective is not None:
                stored = models.TrialValueModel.stored_repr_to_value(value, kind)
                objectives.setdefault(trial_id, {})[objective] = stored
        for trial_id, by_objective in objectives.items():
            read[trial_id].values = [by_objective[k] for k in sorted(by_objective)]
        for trial_id, key, value_json in extra:
            if trial_id in read:
                read[trial_id].system_attrs[key] = json.loads(value_json)
        for trial_id, row in read.items():
            self._rows[trial_id] = row
            self._newest = max(self._newest, trial_id)
            if row.state.is_finished():
                self._unfinished.discard(trial_id)
            else:
                self._unfinished.add(trial_id)
        return sorted(self._rows.values(), key=lambda r: r.number)

    def user_attr(self, trial_id: int, key: str) -> Any:
        """The user attribute ``key`` of a trial (None if it has none); one query."""
        import sqlalchemy
        from optuna.storages._rdb import models

        attrs = models.TrialUserAttributeModel.__table__
        with self._engine.connect() as connection:
            found = connection.execute(
                sqlalchemy.select(attrs.c.value_json).where(
                    attrs.c.trial_id == trial_id, attrs.c.key == key
                )
            ).scalar_one_or_none()
        return None if found is None else json.loads(found)

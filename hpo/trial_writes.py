"""A trial's writes to the Optuna storage: its claim, its values and attributes, its end, each in
one transaction, not one per row.

``Trial.report`` writes each epoch's value to the storage at once (one transaction, 2 ms on
SQLite in WAL mode, more against a remote Postgres), and so does every ``set_user_attr``: for
the reference trial (20 epochs, 9 attributes) that is about 60 ms of a 370 ms training. Nothing
needs those rows while the trial runs, except the trial's own pruning decision and a dashboard
that shows its curve live:

* :func:`start_trial` creates a trial with its worker's name and first heartbeat (``ask`` and
  two more writes before);
* :func:`report` records a value on the trial object only, where ``Trial.should_prune`` reads it
  (Optuna keeps the running trial's values in ``trial._cached_frozen_trial``): the pruner decides
  exactly as after ``Trial.report``;
* :func:`write_trial` writes what was collected in one transaction: every few seconds while the
  trial runs (the dashboard's curve stays live), and before the trial is told its end, so a
  finished trial has all its values and attributes, as Optuna's pruners of other trials and
  ``Study.tell`` (a pruned trial's value is its last report) expect;
* :func:`finish_trial` is ``Study.tell`` with those writes in the same transaction.

On SQLite and PostgreSQL the rows are written with a few SQL statements on Optuna's own tables
(an upsert per table); on other RDB databases through Optuna's models and its
``_set_trial_attr_without_commit`` (Optuna 5.0, which ``pyproject.toml`` pins); other storages
get one call per row.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.storage import rdb_backend


def report(trial: optuna.Trial, step: int, value: float) -> bool:
    """Record ``value`` at ``step`` on the running trial, for its pruner, without writing it.

    Returns False (and records nothing) if the step was reported already, as ``Trial.report``
    ignores a second report of a step.
    """
    values = trial._cached_frozen_trial.intermediate_values
    if step in values:
        return False
    values[step] = float(value)
    return True


def start_trial(
    study: optuna.Study, user_attrs: Mapping[str, Any], *, heartbeat: bool
) -> optuna.Trial | None:
    """``Study.ask`` for a new trial, its ``user_attrs`` and (``heartbeat``) its first
    heartbeat written in the same transaction, on a SQLite or PostgreSQL storage; None where
    this does not apply (another storage, or trials queued: ``Study.ask`` runs the first of
    them, with its parameters, and the caller writes the rest).

    ``ask`` read every trial still running or new since its last read through the ORM to find
    the queued ones (4 ms per trial of the reference study on SQLite), then created the trial in
    a transaction of its own; the worker's attribute and the heartbeat were two more. Here the
    queue is one query, and the trial is numbered as Optuna numbers it (the count of the study's
    earlier trials, under the study's row lock on Postgres and SQLite's write lock) and put in
    the storage's cache as ``create_new_trial`` puts it (Optuna 5.0, which ``pyproject.toml``
    pins).
    """
    import sqlalchemy
    from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    storage = study._storage
    backend = rdb_backend(storage)
    if (
        not isinstance(storage, _CachedStorage)
        or backend is None
        or not _has_upsert(backend)
        or not backend.engine.dialect.insert_returning
    ):
        return None
    trials = models.TrialModel.__table__
    study_id = study._study_id
    now = datetime.now()
    with _create_scoped_session(backend.scoped_session) as session:
        connection = session.connection()
        queued = connection.execute(
            sqlalchemy.select(trials.c.trial_id)
            .where(trials.c.study_id == study_id, trials.c.state == TrialState.WAITING)
            .limit(1)
        ).first()
        if queued is not None:
            return None
        studies = models.StudyModel.__table__
        # Postgres: the study's row lock, as Optuna's own creation takes, so that two workers do
        # not count the same earlier trials (SQLite takes its write lock with the INSERT).
        connection.execute(
            sqlalchemy.select(studies.c.study_id)
            .where(studies.c.study_id == study_id)
            .with_for_update()
        )
        earlier = (
            sqlalchemy.select(sqlalchemy.func.count())
            .select_from(trials)
            .where(trials.c.study_id == study_id)
            .scalar_subquery()
        )
        trial_id, number = connection.execute(
            sqlalchemy.insert(trials)
            .values(number=earlier, study_id=study_id, state=TrialState.RUNNING, datetime_start=now)
            .returning(trials.c.trial_id, trials.c.number)
        ).one()
        if user_attrs:
            connection.execute(
                _upsert_statements(backend.engine.name)["trial_user_attributes"],
                _attr_rows(trial_id, user_attrs),
            )
        if heartbeat:
            connection.execute(
                sqlalchemy.insert(models.TrialHeartbeatModel.__table__).values(trial_id=trial_id)
            )
    frozen = FrozenTrial(
        number=number,
        state=TrialState.RUNNING,
        value=None,
        values=None,
        datetime_start=now,
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs=dict(user_attrs),
        system_attrs={},
        intermediate_values={},
        trial_id=trial_id,
    )
    with storage._lock:
        storage._studies.setdefault(study_id, _StudyInfo())
        storage._add_trials_to_cache(study_id, [frozen])
    # What ask does: the study's trials are read again for this trial.
    study._thread_local.cached_all_trials = None
    return _trial(study, frozen)


def _trial(study: optuna.Study, frozen: FrozenTrial) -> optuna.Trial:
    """``optuna.Trial(study, frozen._trial_id)`` for the trial just created as ``frozen``,
    without reading it back: ``Trial.__init__`` reads it through the ORM (the cache keeps only
    finished trials), 1.8 ms per trial. The same attributes, set as Optuna 5.0's ``__init__``
    sets them (``tests/unit/test_worker.py`` compares them with Optuna's own)."""
    from optuna import pruners

    trial = optuna.Trial.__new__(optuna.Trial)
    trial.study = study
    trial._trial_id = frozen._trial_id
    trial.storage = study._storage
    trial._cached_frozen_trial = frozen
    study.sampler.before_trial(pruners._filter_study(study, frozen), frozen)
    trial.relative_search_space = None
    trial._relative_params = None
    trial._fixed_params = frozen.system_attrs.get("fixed_params", {})
    return trial


def write_trial(
    storage: optuna.storages.BaseStorage,
    trial_id: int,
    *,
    user_attrs: Mapping[str, Any] | None = None,
    intermediate_values: Mapping[int, float] | None = None,
) -> None:
    """Write ``intermediate_values`` and ``user_attrs`` of a running trial, in one transaction
    on an RDB storage. Raises what the storage raises (``UpdateFinishedTrialError`` for a trial
    that ended, even with nothing to write; ``StorageInternalError`` for a database that is
    away); nothing is written then.
    """
    attrs = dict(user_attrs or {})
    values = dict(intermediate_values or {})
    backend = rdb_backend(storage)
    if backend is not None:
        _write_rdb(backend, trial_id, attrs, values)
        return
    for step, value in sorted(values.items()):
        storage.set_trial_intermediate_value(trial_id, step, value)
    for key, attr in attrs.items():
        storage.set_trial_user_attr(trial_id, key, attr)


def finish_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    state: TrialState,
    values: Sequence[float] | None = None,
    *,
    user_attrs: Mapping[str, Any] | None = None,
    intermediate_values: Mapping[int, float] | None = None,
) -> FrozenTrial:
    """``Study.tell`` of a running trial, with its unwritten ``user_attrs`` and
    ``intermediate_values`` in the same transaction; return the finished trial.

    ``tell`` reads the trial back twice (to check it, and to return it) and writes its state in
    a transaction of its own: 3 of the ~6 ms a trial's end took on SQLite, for what the worker
    already holds. Here the trial object's own record (every value reported, the parameters,
    the attributes set through it) is the one checked and returned, and one transaction writes
    everything. What ``tell`` decides is decided the same way (Optuna 5.0, which
    ``pyproject.toml`` pins): COMPLETE values that are not finite numbers, or not one per
    objective, make the trial FAIL with a warning; a PRUNED trial's value is its last reported
    one; the sampler's ``after_trial`` runs first. Raises what the storage raises for a trial
    that is no longer running (``UpdateFinishedTrialError``), having written nothing. Storages
    other than RDB get :func:`write_trial` and ``Study.tell``.
    """
    import copy
    import warnings

    from optuna.pruners import _filter_study
    from optuna.study._tell import _check_values_are_feasible

    attrs = dict(user_attrs or {})
    reports = dict(intermediate_values or {})
    backend = rdb_backend(study._storage)
    if backend is None:
        write_trial(study._storage, trial._trial_id, user_attrs=attrs, intermediate_values=reports)
        if state == TrialState.COMPLETE:
            return study.tell(trial, values)
        return study.tell(trial, state=state)

    # Only valid within a trial (what tell does first).
    study._thread_local.cached_all_trials = None
    frozen = copy.deepcopy(trial._cached_frozen_trial)
    frozen.intermediate_values.update(reports)
    frozen.user_attrs.update(attrs)
    listed: list[float] | None = None
    if state == TrialState.COMPLETE:
        problem = _check_values_are_feasible(study, list(values or []))
        if problem is None:
            listed = [float(v) for v in values or []]
        else:
            warnings.warn(problem, stacklevel=2)
            state = TrialState.FAIL
    elif state == TrialState.PRUNED and frozen.last_step is not None:
        last = frozen.intermediate_values[frozen.last_step]
        if _check_values_are_feasible(study, [last]) is None:
            listed = [float(last)]
    now = datetime.now()
    try:
        study.sampler.after_trial(_filter_study(study, frozen), frozen, state, listed)
    finally:
        _write_rdb(backend, trial._trial_id, attrs, reports, end=(state, listed, now))
    frozen.state = state
    frozen.values = listed
    frozen.datetime_complete = now
    return frozen


def _write_rdb(
    backend: optuna.storages.RDBStorage,
    trial_id: int,
    attrs: Mapping[str, Any],
    values: Mapping[int, float],
    end: tuple[TrialState, Sequence[float] | None, datetime] | None = None,
) -> None:
    """Write ``values`` and ``attrs``; with ``end`` (state, values, time), finish the trial
    in the same transaction, as ``RDBStorage.set_trial_state_values`` does."""
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(backend.scoped_session, True) as session:
        if _has_upsert(backend):
            _write_statements(backend, session.connection(), trial_id, attrs, values, end)
        else:
            _write_orm(backend, session, trial_id, attrs, values, end)


def _has_upsert(backend: optuna.storages.RDBStorage) -> bool:
    """Whether the storage's database has ``INSERT … ON CONFLICT`` (SQLite 3.24 or later,
    PostgreSQL); on others (MySQL, older SQLite) rows are written through the ORM."""
    import sqlite3

    dialect = backend.engine.name
    return dialect == "postgresql" or (
        dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0)
    )


#: States a trial's rows may still be written in (Optuna's ``check_trial_is_updatable``).
_UPDATABLE = (TrialState.RUNNING, TrialState.WAITING)


def _write_statements(
    backend: optuna.storages.RDBStorage,
    connection: Any,
    trial_id: int,
    attrs: Mapping[str, Any],
    values: Mapping[int, float],
    end: tuple[TrialState, Sequence[float] | None, datetime] | None,
) -> None:
    """:func:`_write_rdb` in a few SQL statements: the trial's end first (an ``UPDATE`` only
    of a trial that may still be written, which also takes the write lock: a worker failing
    the trial as stale meanwhile makes it a no-op, and nothing is written), then one upsert each
    for the intermediate values, the attributes and the objective values. Through the ORM the
    end of a trial with 20 reports and 9 attributes was 26 statements, 6.9 ms on SQLite (one
    ``INSERT`` per step); here it is 5, 1.3 ms."""
    import sqlalchemy
    from optuna.storages._rdb import models

    trials = models.TrialModel.__table__
    if end is None:
        _check_updatable(backend, connection, trial_id)
    else:
        final, _, now = end
        ended = connection.execute(
            sqlalchemy.update(trials)
            .where(trials.c.trial_id == trial_id, trials.c.state.in_(_UPDATABLE))
            .values(state=final, datetime_complete=now)
        )
        if ended.rowcount != 1:
            _check_updatable(backend, connection, trial_id)  # raises: gone, or finished meanwhile
            raise AssertionError(f"trial {trial_id} was not ended")
    upserts = _upsert_statements(backend.engine.name)
    if values:
        model = models.TrialIntermediateValueModel
        rows: list[dict[str, Any]] = []
        for step, value in sorted(values.items()):
            stored, kind = model.intermediate_value_to_stored_repr(value)
            rows.append(
                {
                    "trial_id": trial_id,
                    "step": step,
                    "intermediate_value": stored,
                    "intermediate_value_type": kind,
                }
            )
        connection.execute(upserts["trial_intermediate_values"], rows)
    if attrs:
        connection.execute(upserts["trial_user_attributes"], _attr_rows(trial_id, attrs))
    objective_values = list(end[1] or ()) if end is not None else []
    if objective_values:
        rows = []
        for objective, value in enumerate(objective_values):
            number, value_type = models.TrialValueModel.value_to_stored_repr(value)
            rows.append(
                {
                    "trial_id": trial_id,
                    "objective": objective,
                    "value": number,
                    "value_type": value_type,
                }
            )
        connection.execute(upserts["trial_values"], rows)


@functools.cache
def _upsert_statements(dialect: str) -> dict[str, Any]:
    """Per table, an ``INSERT … ON CONFLICT (its unique key) DO UPDATE`` of one row, run with
    a list of rows (one ``executemany``; built once, so compiled once): a step reported again,
    an attribute set again, replaces its value, as Optuna's own writes do."""
    from optuna.storages._rdb import models

    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
    keys: list[tuple[Any, str, tuple[str, ...]]] = [
        (
            models.TrialIntermediateValueModel,
            "step",
            ("intermediate_value", "intermediate_value_type"),
        ),
        (models.TrialUserAttributeModel, "key", ("value_json",)),
        (models.TrialValueModel, "objective", ("value", "value_type")),
    ]
    statements: dict[str, Any] = {}
    for model, key, columns in keys:
        table = model.__table__
        statement = insert(table)
        statements[table.name] = statement.on_conflict_do_update(
            index_elements=[table.c.trial_id, table.c[key]],
            set_={c: statement.excluded[c] for c in columns},
        )
    return statements


def _attr_rows(trial_id: int, attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``trial_user_attributes`` rows of ``attrs`` (JSON values, as Optuna stores them)."""
    return [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]


def _check_updatable(backend: optuna.storages.RDBStorage, connection: Any, trial_id: int) -> None:
    """Raise as Optuna does for a trial that is not there (``KeyError``) or has finished
    (``UpdateFinishedTrialError``): one query of its state."""
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.storages._rdb.models import NOT_FOUND_MSG

    trials = models.TrialModel.__table__
    state = connection.execute(
        sqlalchemy.select(trials.c.state).where(trials.c.trial_id == trial_id)
    ).scalar_one_or_none()
    if state is None:
        raise KeyError(NOT_FOUND_MSG)
    backend.check_trial_is_updatable(trial_id, state)


def _write_orm(
    backend: optuna.storages.RDBStorage,
    session: Any,
    trial_id: int,
    attrs: Mapping[str, Any],
    values: Mapping[int, float],
    end: tuple[TrialState, Sequence[float] | None, datetime] | None,
) -> None:
    """:func:`_write_rdb` through Optuna's models, on databases without an upsert."""
    from optuna.storages._rdb import models

    value_model = models.TrialIntermediateValueModel
    # Locked (Postgres) when it ends the trial: another worker failing it as stale waits.
    trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=end is not None)
    backend.check_trial_is_updatable(trial_id, trial.state)  # type: ignore[arg-type]
    if values:
        # One query for the steps already stored (a step reported again replaces its value,
        # as Optuna's own write does), then the new rows.
        stored: dict[int, Any] = {
            int(row.step): row
            for row in session.query(value_model).filter(
                value_model.trial_id == trial_id, value_model.step.in_(list(values))
            )
        }
        for step, value in sorted(values.items()):
            representation, kind = value_model.intermediate_value_to_stored_repr(value)
            row = stored.get(step)
            if row is None:
                session.add(
                    value_model(
                        trial_id=trial_id,
                        step=step,
                        intermediate_value=representation,
                        intermediate_value_type=kind,
                    )
                )
            else:
                row.intermediate_value = representation
                row.intermediate_value_type = kind
    model = models.TrialUserAttributeModel
    for key, attr in attrs.items():
        backend._set_trial_attr_without_commit(session, model, trial_id, key, attr)
    if end is not None:
        state, objective_values, now = end
        for objective, value in enumerate(objective_values or ()):
            backend._set_trial_value_without_commit(session, trial, objective, value)
        trial.state = state
        trial.datetime_complete = now

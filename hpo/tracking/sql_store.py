"""MLflow's hottest writes on a database store (SQLite, PostgreSQL), one transaction each.

MLflow's ``SqlAlchemyStore`` writes through its ORM, a session per kind of value, and reads the
run or the experiment back in each: what a trial writes costs more in Python than in the
database. On 2 cores a worker that sends its own runs (2 workers) pays that on the cores the
trials need, and a run and its LoggedModel are created on every trial's critical path.

* :func:`log_batch`: MLflow's ``log_batch`` opens a session per kind of value (params, metrics,
  the model's metrics, tags), loads the run with its params and tags in each, and writes one
  object at a time: 55 statements for a reference trial's run (16 params, 92 metric points, 3
  tags), 14-18 ms of the sender's 54 ms per run (``benchmarks/overhead.py``). Here: the run is
  read once (it must exist and be active), params and metric points are inserted with
  ``ON CONFLICT DO NOTHING`` (a param logged again must keep its value, checked with one read;
  a point sent twice is stored once, as MLflow keys it), each key's latest value is an upsert
  that only replaces an older point (MLflow's order: step, then timestamp, then value), points
  linked to a LoggedModel also go to its metrics, and tags are upserts. Measured on the
  reference run, SQLite in WAL mode: 5.3 ms against 17.8 ms (30 calls each, medians).
* :func:`create_run` and :func:`new_logged_model`: MLflow reads the experiment with its tags
  in a session of its own, and the new run's inputs back, before it answers. Here: one read of
  the experiment's location and stage, the inserts, one commit.
* :func:`end_run`, :func:`log_model_output` and :func:`finalize_logged_model`: MLflow loads the
  run (or model) with its params and tags to change one row or add one. Here: one read of the
  run's stage where MLflow checks it, and the one write.

The checks on the values are MLflow's own (``mlflow.utils.validation``), so what MLflow refuses
is refused here with its message, and the rows are MLflow's (its table definitions, its ids).
Only for stores :func:`supports` accepts: another store (a tracking server, MySQL, a store class
MLflow may add) and a batch that sets ``mlflow.*`` tags (the run's name is a column too) go
through MLflow's own calls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

#: Database dialects this module writes to (both have ``INSERT … ON CONFLICT`` and row values).
DIALECTS = ("sqlite", "postgresql")
#: SQL has no infinity in every database: MLflow stores ±inf as the largest finite double.
_FLOAT_MAX = 1.7976931348623157e308


def supports(store: Any, tags: Sequence[Any] = ()) -> bool:
    """Whether this module can write to ``store`` (with these run ``tags``, for
    :func:`log_batch`)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from hpo.tracking.server_store import ServerStore

    # A subclass may write differently; hpo's own (the tracking server's) is MLflow's class.
    if type(store) not in (SqlAlchemyStore, ServerStore):
        return False
    if store.engine.dialect.name not in DIALECTS:
        return False
    return not any(str(t.key).startswith("mlflow.") for t in tags)


def _sanitized(value: float) -> tuple[bool, float]:
    """``(is_nan, value)`` as MLflow stores a metric value (``sanitize_metric_value``)."""
    if math.isnan(value):
        return True, 0.0
    if math.isinf(value):
        return False, _FLOAT_MAX if value > 0 else -_FLOAT_MAX
    return False, float(value)


def _insert(store: Any, table: Any) -> Any:
    """The dialect's ``INSERT`` (both have ``on_conflict_do_nothing`` / ``_do_update``)."""
    from sqlalchemy.dialects import postgresql, sqlite

    if store.engine.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def log_batch(
    store: Any,
    run_id: str,
    metrics: Sequence[Any] = (),
    params: Sequence[Any] = (),
    tags: Sequence[Any] = (),
) -> None:
    """What ``store.log_batch(run_id, metrics, params, tags)`` does, in one transaction (see
    the module docstring); ``store`` must be one :func:`supports` accepts."""
    import sqlalchemy as sa
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    from mlflow.store.tracking.dbmodels.models import (
        SqlLatestMetric,
        SqlLoggedModelMetric,
        SqlMetric,
        SqlParam,
        SqlTag,
    )
    from mlflow.utils.validation import (
        _validate_batch_log_data,
        _validate_batch_log_limits,
        _validate_param_keys_unique,
        _validate_run_id,
    )

    _validate_run_id(run_id)
    metrics, params, tags = _validate_batch_log_data(metrics, params, tags)
    _validate_batch_log_limits(metrics, params, tags)
    _validate_param_keys_unique(params)

    points: dict[tuple[Any, ...], dict[str, Any]] = {}
    linked: dict[tuple[Any, ...], dict[str, Any]] = {}
    latest: dict[str, dict[str, Any]] = {}
    for m in metrics:
        is_nan, value = _sanitized(m.value)
        row = {
            "run_uuid": run_id,
            "key": m.key,
            "value": value,
            "timestamp": int(m.timestamp),
            "step": int(m.step or 0),
            "is_nan": is_nan,
        }
        points.setdefault((m.key, row["timestamp"], row["step"], value, is_nan), row)
        best = latest.get(m.key)
        if best is None or (row["step"], row["timestamp"], value) > (
            best["step"],
            best["timestamp"],
            best["value"],
        ):
            latest[m.key] = row
        if getattr(m, "model_id", None):
            linked.setdefault(
                (m.model_id, m.key, row["timestamp"], row["step"], value),
                {
                    "model_id": m.model_id,
                    "metric_name": m.key,
                    "metric_timestamp_ms": row["timestamp"],
                    "metric_step": row["step"],
                    "metric_value": value,
                    "run_id": run_id,
                    "dataset_uuid": None,
                    "dataset_name": m.dataset_name,
                    "dataset_digest": m.dataset_digest,
                },
            )

    with store.ManagedSessionMaker(read_only=False) as session:
        run = _active_run(session, run_id)
        if params:
            session.execute(
                _insert(store, SqlParam.__table__).on_conflict_do_nothing(),
                [{"run_uuid": run_id, "key": p.key, "value": p.value} for p in params],
            )
            wanted = {p.key: p.value for p in params}
            stored = session.execute(
                sa.select(SqlParam.key, SqlParam.value).where(
                    SqlParam.run_uuid == run_id, SqlParam.key.in_(list(wanted))
                )
            ).all()
            changed = [
                {"key": key, "old_value": value, "new_value": wanted[key]}
                for key, value in stored
                if value != wanted[key]
            ]
            if changed:  # the transaction is rolled back: nothing of this batch is written
                raise MlflowException(
                    "Changing param values is not allowed. Params were already"
                    f" logged='{changed}' for run ID='{run_id}'.",
                    INVALID_PARAMETER_VALUE,
                )
        if points:
            session.execute(
                _insert(store, SqlMetric.__table__).on_conflict_do_nothing(), list(points.values())
            )
            table = SqlLatestMetric.__table__
            upsert = _insert(store, table)
            new = upsert.excluded
            session.execute(
                upsert.on_conflict_do_update(
                    index_elements=[table.c.key, table.c.run_uuid],
                    set_={
                        "value": new.value,
                        "timestamp": new.timestamp,
                        "step": new.step,
                        "is_nan": new.is_nan,
                    },
                    # Only a more recent point replaces the one stored (MLflow's order).
                    where=sa.tuple_(table.c.step, table.c.timestamp, table.c.value)
                    < sa.tuple_(new.step, new.timestamp, new.value),
                ),
                list(latest.values()),
            )
        if linked:
            experiment_id = int(run.experiment_id)
            session.execute(
                _insert(store, SqlLoggedModelMetric.__table__).on_conflict_do_nothing(),
                [{**row, "experiment_id": experiment_id} for row in linked.values()],
            )
        if tags:
            table = SqlTag.__table__
            upsert = _insert(store, table)
            values = {t.key: t.value for t in tags}  # the last of a key wins, as in MLflow
            session.execute(
                upsert.on_conflict_do_update(
                    index_elements=[table.c.key, table.c.run_uuid],
                    set_={"value": upsert.excluded.value},
                ),
                [{"run_uuid": run_id, "key": k, "value": v} for k, v in values.items()],
            )


def _experiment(session: Any, experiment_id: str) -> Any:
    """The experiment's artifact location, refused as MLflow refuses it: missing or deleted."""
    import sqlalchemy as sa
    from mlflow.entities import LifecycleStage
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
    from mlflow.store.tracking.dbmodels.models import SqlExperiment

    row = session.execute(
        sa.select(SqlExperiment.artifact_location, SqlExperiment.lifecycle_stage).where(
            SqlExperiment.experiment_id == int(experiment_id)
        )
    ).one_or_none()
    if row is None:
        raise MlflowException(
            f"No Experiment with id={experiment_id} exists", RESOURCE_DOES_NOT_EXIST
        )
    if row.lifecycle_stage != LifecycleStage.ACTIVE:
        raise MlflowException(
            f"The experiment {experiment_id} must be in the 'active' state. "
            f"Current state is {row.lifecycle_stage}.",
            INVALID_PARAMETER_VALUE,
        )
    return row.artifact_location


def create_run(
    store: Any, experiment_id: str, run_name: str, tags: Mapping[str, str]
) -> tuple[str, str]:
    """What ``MlflowClient.create_run(experiment_id, run_name=run_name, tags=tags)`` stores, in
    one transaction; return the run's ``(id, artifact URI)``. The run's name is also its
    ``mlflow.runName`` tag, and its user the ``mlflow.user`` tag or ``unknown``, as MLflow
    makes them."""
    from mlflow.utils.mlflow_tags import MLFLOW_USER

    run = new_run(store, experiment_id, run_name, tags, tags.get(MLFLOW_USER, "unknown"), None)
    return run.info.run_id, run.info.artifact_uri


def new_run(
    store: Any,
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, str],
    user_id: str,
    start_time: int | None,
) -> Any:
    """:func:`create_run` with the run's ``user_id`` and ``start_time`` (None: now), returning
    the new run as ``SqlAlchemyStore.create_run`` returns it (MLflow's ``Run`` entity), without
    reading it back: MLflow reads the experiment with its tags first, and the run's tags,
    params, metrics and inputs after inserting it (what a tracking server answers with)."""
    import uuid

    from mlflow.entities import (
        LifecycleStage,
        Run,
        RunData,
        RunInfo,
        RunInputs,
        RunStatus,
        SourceType,
    )
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    from mlflow.store.tracking.dbmodels.models import SqlRun, SqlTag
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
    from mlflow.utils.time import get_current_time_millis
    from mlflow.utils.uri import append_to_uri_path
    from mlflow.utils.validation import _validate_tag

    named = tags.get(MLFLOW_RUN_NAME)
    if named is not None and named != run_name:
        raise MlflowException(
            "Both 'run_name' argument and 'mlflow.runName' tag are specified, but with "
            f"different values (run_name='{run_name}', mlflow.runName='{named}').",
            INVALID_PARAMETER_VALUE,
        )
    rows = {k: _validate_tag(k, v) for k, v in {**tags, MLFLOW_RUN_NAME: run_name}.items()}
    run_id = uuid.uuid4().hex
    started = get_current_time_millis() if start_time is None else int(start_time)
    with store.ManagedSessionMaker(read_only=False) as session:
        location = _experiment(session, experiment_id)
        artifact_uri = append_to_uri_path(location, run_id, store.ARTIFACTS_FOLDER_NAME)
        session.execute(
            SqlRun.__table__.insert(),
            {
                "run_uuid": run_id,
                "name": run_name,
                "artifact_uri": artifact_uri,
                "experiment_id": int(experiment_id),
                "source_type": SourceType.to_string(SourceType.UNKNOWN),
                "source_name": "",
                "entry_point_name": "",
                "user_id": user_id,
                "status": RunStatus.to_string(RunStatus.RUNNING),
                "start_time": started,
                "end_time": None,
                "deleted_time": None,
                "source_version": "",
                "lifecycle_stage": LifecycleStage.ACTIVE,
            },
        )
        session.execute(
            SqlTag.__table__.insert(),
            [{"run_uuid": run_id, "key": t.key, "value": t.value} for t in rows.values()],
        )
    info = RunInfo(
        run_id=run_id,
        experiment_id=str(experiment_id),
        user_id=user_id,
        status=RunStatus.to_string(RunStatus.RUNNING),
        start_time=started,
        end_time=None,
        lifecycle_stage=LifecycleStage.ACTIVE,
        artifact_uri=artifact_uri,
        run_name=run_name,
    )
    return Run(info, RunData(tags=list(rows.values())), RunInputs(dataset_inputs=[]))


def new_logged_model(
    store: Any,
    experiment_id: str,
    name: str,
    source_run_id: str | None,
    params: Mapping[str, str],
    tags: Mapping[str, str],
    model_type: str | None = None,
) -> Any:
    """What ``MlflowClient.create_logged_model`` stores (a PENDING LoggedModel), in one
    transaction; returns the new model as ``SqlAlchemyStore.create_logged_model`` returns it
    (MLflow's ``LoggedModel`` entity, its id ``m-…``), without reading it back:
    MLflow reads the experiment with its tags first, and the model's tags, params and metrics
    after its commit (what a tracking server answers with)."""
    import uuid

    from mlflow.entities import LifecycleStage, LoggedModel, LoggedModelStatus
    from mlflow.store.tracking.dbmodels.models import (
        SqlLoggedModel,
        SqlLoggedModelParam,
        SqlLoggedModelTag,
    )
    from mlflow.utils.time import get_current_time_millis
    from mlflow.utils.uri import append_to_uri_path
    from mlflow.utils.validation import _validate_logged_model_name

    _validate_logged_model_name(name)
    model_id = f"m-{uuid.uuid4().hex}"
    now = get_current_time_millis()
    exp = int(experiment_id)
    with store.ManagedSessionMaker(read_only=False) as session:
        location = append_to_uri_path(
            _experiment(session, experiment_id),
            store.MODELS_FOLDER_NAME,
            model_id,
            store.ARTIFACTS_FOLDER_NAME,
        )
        session.execute(
            SqlLoggedModel.__table__.insert(),
            {
                "model_id": model_id,
                "experiment_id": exp,
                "name": name,
                "artifact_location": location,
                "creation_timestamp_ms": now,
                "last_updated_timestamp_ms": now,
                "model_type": model_type,
                "status": LoggedModelStatus.PENDING.to_int(),
                "lifecycle_stage": LifecycleStage.ACTIVE,
                "source_run_id": source_run_id,
            },
        )
        for table, kind, values in (
            (SqlLoggedModelParam.__table__, "param", params),
            (SqlLoggedModelTag.__table__, "tag", tags),
        ):
            if values:
                session.execute(
                    table.insert(),
                    [
                        {
                            "model_id": model_id,
                            "experiment_id": exp,
                            f"{kind}_key": str(k),
                            f"{kind}_value": str(v),
                        }
                        for k, v in values.items()
                    ],
                )
    return LoggedModel(
        model_id=model_id,
        experiment_id=str(exp),
        name=name,
        artifact_location=location,
        creation_timestamp=now,
        last_updated_timestamp=now,
        status=LoggedModelStatus.PENDING,
        model_type=model_type,
        source_run_id=source_run_id,
        status_message=None,
        tags={str(k): str(v) for k, v in tags.items()} or None,
        params={str(k): str(v) for k, v in params.items()} or None,
        metrics=None,
    )


def logged_model_location(store: Any, model_id: str) -> str | None:
    """The artifact location of LoggedModel ``model_id``; None if there is no such model."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlLoggedModel

    with store.ManagedSessionMaker() as session:
        row = session.execute(
            sa.select(SqlLoggedModel.artifact_location).where(SqlLoggedModel.model_id == model_id)
        ).one_or_none()
    return None if row is None else str(row.artifact_location)


def finalize_logged_model(store: Any, model_id: str, status: Any) -> None:
    """What ``MlflowClient.finalize_logged_model(model_id, status)`` stores, without reading
    the model back: its status, and the time of this change."""
    import sqlalchemy as sa
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
    from mlflow.store.tracking.dbmodels.models import SqlLoggedModel
    from mlflow.utils.time import get_current_time_millis

    with store.ManagedSessionMaker(read_only=False) as session:
        done = session.execute(
            sa.update(SqlLoggedModel)
            .where(SqlLoggedModel.model_id == model_id)
            .values(status=status.to_int(), last_updated_timestamp_ms=get_current_time_millis())
        )
        if done.rowcount == 0:
            raise MlflowException(
                f"Logged model with ID '{model_id}' not found.", RESOURCE_DOES_NOT_EXIST
            )


def _active_run(session: Any, run_id: str) -> Any:
    """The run's ``(lifecycle_stage, experiment_id)``, refused as MLflow refuses it: missing,
    or not active (deleted)."""
    import sqlalchemy as sa
    from mlflow.entities import LifecycleStage
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
    from mlflow.store.tracking.dbmodels.models import SqlRun

    run = session.execute(
        sa.select(SqlRun.lifecycle_stage, SqlRun.experiment_id).where(SqlRun.run_uuid == run_id)
    ).one_or_none()
    if run is None:
        raise MlflowException(f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST)
    if run.lifecycle_stage != LifecycleStage.ACTIVE:
        raise MlflowException(
            f"The run {run_id} must be in the 'active' state. "
            f"Current state is {run.lifecycle_stage}.",
            INVALID_PARAMETER_VALUE,
        )
    return run


def end_run(store: Any, run_id: str, status: str, end_time: int) -> None:
    """What ``store.update_run_info(run_id, status, end_time, run_name=None)`` stores: the
    run's status (``FINISHED``, ``FAILED``, ``KILLED``…) and end time, without reading the run
    and its tags back."""
    import sqlalchemy as sa
    from mlflow.entities import RunStatus
    from mlflow.store.tracking.dbmodels.models import SqlRun

    status = RunStatus.to_string(RunStatus.from_string(status))  # refuses an unknown status
    with store.ManagedSessionMaker(read_only=False) as session:
        _active_run(session, run_id)
        session.execute(
            sa.update(SqlRun)
            .where(SqlRun.run_uuid == run_id)
            .values(status=status, end_time=int(end_time))
        )


def log_model_output(store: Any, run_id: str, model_id: str, step: int) -> None:
    """What ``MlflowClient.log_outputs(run_id, [LoggedModelOutput(model_id, step)])`` stores:
    the model as the run's output at ``step``."""
    import uuid

    from mlflow.store.tracking.dbmodels.models import SqlInput

    with store.ManagedSessionMaker(read_only=False) as session:
        _active_run(session, run_id)
        session.execute(
            SqlInput.__table__.insert(),
            {
                "input_uuid": uuid.uuid4().hex,
                "source_type": "RUN_OUTPUT",
                "source_id": run_id,
                "destination_type": "MODEL_OUTPUT",
                "destination_id": model_id,
                "step": int(step),
            },
        )

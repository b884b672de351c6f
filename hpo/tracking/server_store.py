"""The tracking server's store: MLflow's ``SqlAlchemyStore`` with hpo's one-transaction writes
(:mod:`hpo.tracking.sql_store`), for ``mlflow server`` as hpo runs it.

Workers that log to a tracking server cannot write SQL themselves; the server does it for them,
through MLflow's ORM. Its ``log_batch`` was 28 % of the server's CPU samples over the reference
trials (py-spy, ``benchmarks/overhead.py``'s HTTP side), ``create_logged_model`` and
``create_run`` (which read the experiment with its tags first and the new row back after) next:
a session per kind of value, one object at a time. On 2 cores that CPU is taken from training.

``mlflow server`` finds this store through MLflow's plugin entry points (``pyproject.toml``,
group ``mlflow.tracking_store``: :func:`hpo.tracking.server.tracking_store`) when its backend
store URI is the database's with ``hpo+`` in front (:func:`hpo.tracking.server.server_store_uri`:
``hpo+sqlite:///…``, ``hpo+postgresql+psycopg://…``). The database is the same, with the same
tables and rows: any MLflow client or server can use it, and a server given the plain URI is
MLflow's own. The model registry keeps the plain URI (``--registry-store-uri``). Everything but
``log_batch``, ``create_run``, ``create_logged_model`` and one model's ``log_outputs`` is
MLflow's, as are those for what :mod:`hpo.tracking.sql_store` leaves to MLflow (``mlflow.*``
tags in a batch, a run or model without a name, a key given twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from hpo.tracking.server import database_uri


class ServerStore(SqlAlchemyStore):
    """MLflow's ``SqlAlchemyStore`` on the database of ``store_uri`` (with or without
    :data:`hpo.tracking.server.PREFIX`, a SQLite or PostgreSQL database: what
    :func:`hpo.tracking.sql_store.supports` takes), whose ``log_batch``, ``create_run``,
    ``create_logged_model`` and ``log_outputs`` are :mod:`hpo.tracking.sql_store`'s."""

    def __init__(self, store_uri: str, default_artifact_root: str | None = None) -> None:
        super().__init__(database_uri(store_uri), default_artifact_root)

    def log_batch(
        self, run_id: str, metrics: Sequence[Any], params: Sequence[Any], tags: Sequence[Any]
    ) -> None:
        """MLflow's ``log_batch``, in one transaction where :mod:`hpo.tracking.sql_store`
        writes it."""
        from hpo.tracking import sql_store

        if sql_store.supports(self, tags):
            sql_store.log_batch(self, run_id, metrics=metrics, params=params, tags=tags)
        else:
            super().log_batch(run_id, metrics, params, tags)

    def create_run(
        self,
        experiment_id: str,
        user_id: str,
        start_time: int,
        tags: Sequence[Any],
        run_name: str | None,
    ) -> Any:
        """MLflow's ``create_run``, in one transaction without reading the run back
        (:func:`hpo.tracking.sql_store.new_run`); MLflow's own for a run without a name (MLflow
        makes one up), a tag given twice, or one MLflow's checks would change."""
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
        from mlflow.utils.validation import _validate_tag

        from hpo.tracking import sql_store

        tag_map = _by_key(tags)
        name = run_name or (tag_map or {}).get(MLFLOW_RUN_NAME)
        if (
            not name
            or tag_map is None
            or any(_kept(_validate_tag(k, v)) != (k, v) for k, v in tag_map.items())
        ):
            return super().create_run(
                experiment_id, user_id, start_time, list(tags or ()), run_name
            )
        return sql_store.new_run(self, experiment_id, name, tag_map, user_id, start_time)

    def create_logged_model(
        self,
        experiment_id: str,
        name: str | None = None,
        source_run_id: str | None = None,
        tags: Sequence[Any] | None = None,
        params: Sequence[Any] | None = None,
        model_type: str | None = None,
    ) -> Any:
        """MLflow's ``create_logged_model``, in one transaction without reading the model back
        (:func:`hpo.tracking.sql_store.new_logged_model`); MLflow's own for a model without a
        name (MLflow makes one up) or with a key given twice (MLflow refuses it)."""
        from hpo.tracking import sql_store

        tag_map, param_map = _by_key(tags), _by_key(params)
        if name is None or tag_map is None or param_map is None:
            return super().create_logged_model(
                experiment_id, name, source_run_id, list(tags or ()), list(params or ()), model_type
            )
        return sql_store.new_logged_model(
            self, experiment_id, name, source_run_id, param_map, tag_map, model_type
        )

    def log_outputs(self, run_id: str, models: Sequence[Any]) -> None:
        """MLflow's ``log_outputs``; one model (what a worker logs) in one statement after one
        read of the run's stage (:func:`hpo.tracking.sql_store.log_model_output`), where MLflow
        loads the run with its params and tags."""
        from hpo.tracking import sql_store

        if len(models) == 1:
            sql_store.log_model_output(self, run_id, models[0].model_id, models[0].step)
        else:
            super().log_outputs(run_id, list(models))


def _by_key(items: Sequence[Any] | None) -> dict[str, str] | None:
    """Tags or params (``.key``, ``.value``) by key; None if a key is given twice (MLflow's own
    write refuses that)."""
    by_key = {item.key: item.value for item in items or ()}
    return by_key if len(by_key) == len(items or ()) else None


def _kept(tag: Any) -> tuple[str, str]:
    """A tag as MLflow's checks leave it (a value over its limit cut)."""
    return tag.key, tag.value

"""hpo.tracking.sql_store: what MLflow's log_batch stores, in one transaction, on SQLite and
PostgreSQL."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from hpo.tracking import sql_store
from hpo.tracking.runs import open_client

T0 = 1_700_000_000_000


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def client(request: pytest.FixtureRequest, tracking_uri: str) -> Iterator[MlflowClient]:
    if request.param == "sqlite":
        yield open_client(tracking_uri)
    else:
        yield open_client(request.getfixturevalue("postgres_url"))


def _store(client: MlflowClient) -> Any:
    return client._tracking_client.store


def _batch() -> tuple[list[Metric], list[Param], list[RunTag]]:
    metrics = [
        Metric(key, v, T0 + 10 * step, step)
        for step in range(1, 6)
        for key, v in (("loss", 1.0 / step), ("acc", 0.1 * step))
    ]
    metrics += [
        Metric("acc", 0.9, T0 + 50, 5),  # same step and time, higher value: the latest
        Metric("loss", 0.5, T0 + 20, 2),  # an exact repeat: stored once
        Metric("nan", math.nan, T0, 0),
        Metric("inf", math.inf, T0, 0),
        Metric("ninf", -math.inf, T0, 0),
        Metric("old_step_later", 1.0, T0 + 99, 3),
        Metric("old_step_later", 2.0, T0 + 1, 4),  # a later step wins over a later time
    ]
    # A value over MLflow's limit is cut to it, by MLflow's rule.
    params = [Param("lr", "0.001"), Param("optimizer", "adam"), Param("long", "x" * 7000)]
    tags = [RunTag("hpo.state", "RUNNING"), RunTag("hpo.state", "COMPLETE"), RunTag("x", "y")]
    return metrics, params, tags


def _stored(client: MlflowClient, run_id: str) -> dict[str, Any]:
    run = client.get_run(run_id)
    histories = {
        key: sorted(
            (m.step, m.timestamp, m.value if not math.isnan(m.value) else "nan")
            for m in client.get_metric_history(run_id, key)
        )
        for key in run.data.metrics
    }
    latest = {
        k: "nan" if isinstance(v, float) and math.isnan(v) else v
        for k, v in run.data.metrics.items()
    }
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    return {"latest": latest, "params": run.data.params, "tags": tags, "histories": histories}


def test_it_stores_what_mlflows_log_batch_stores(client: MlflowClient) -> None:
    exp = client.create_experiment("e")
    theirs, ours = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    assert sql_store.supports(_store(client))
    for _ in range(2):  # a batch sent twice (a retried send) is stored once
        metrics, params, tags = _batch()
        client.log_batch(theirs, metrics, params, tags)
        sql_store.log_batch(_store(client), ours, metrics, params, tags)
    # A later batch with older points does not replace the latest values.
    client.log_batch(theirs, [Metric("acc", 0.0, T0, 1)])
    sql_store.log_batch(_store(client), ours, [Metric("acc", 0.0, T0, 1)])

    expected = _stored(client, theirs)
    assert _stored(client, ours) == expected
    assert expected["latest"]["acc"] == 0.9
    assert expected["latest"]["old_step_later"] == 2.0
    assert expected["tags"]["hpo.state"] == "COMPLETE"
    assert len(expected["histories"]["loss"]) == 5
    assert len(expected["params"]["long"]) == 6000


def test_points_linked_to_a_model_are_the_models_metrics(client: MlflowClient) -> None:
    exp = client.create_experiment("e")
    run_id = client.create_run(exp).info.run_id
    model_id = client.create_logged_model(exp, source_run_id=run_id).model_id
    linked = [
        Metric("val_accuracy", 0.97, T0, 0, model_id=model_id, run_id=run_id),
        Metric("val_loss", 0.1, T0, 0, model_id=model_id, run_id=run_id),
    ]
    sql_store.log_batch(_store(client), run_id, [*linked, Metric("train_loss", 0.3, T0, 0)])
    sql_store.log_batch(_store(client), run_id, linked)  # sent again: once
    model = client.get_logged_model(model_id)
    assert sorted((m.key, m.value, m.run_id) for m in model.metrics or []) == [
        ("val_accuracy", 0.97, run_id),
        ("val_loss", 0.1, run_id),
    ]
    assert client.get_run(run_id).data.metrics == {
        "val_accuracy": 0.97,
        "val_loss": 0.1,
        "train_loss": 0.3,
    }


def test_a_changed_param_is_refused_and_nothing_of_the_batch_is_written(
    client: MlflowClient,
) -> None:
    exp = client.create_experiment("e")
    run_id = client.create_run(exp).info.run_id
    sql_store.log_batch(_store(client), run_id, params=[Param("lr", "0.1")])
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        sql_store.log_batch(
            _store(client),
            run_id,
            metrics=[Metric("loss", 1.0, T0, 0)],
            params=[Param("lr", "0.2"), Param("new", "1")],
            tags=[RunTag("t", "v")],
        )
    data = client.get_run(run_id).data
    assert data.params == {"lr": "0.1"}
    assert data.metrics == {}
    assert "t" not in data.tags


def test_what_mlflow_refuses_is_refused_with_its_message(client: MlflowClient) -> None:
    exp = client.create_experiment("e")
    run_id = client.create_run(exp).info.run_id
    store = _store(client)
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        deleted = client.create_run(exp).info.run_id
        client.delete_run(deleted)
        sql_store.log_batch(store, deleted, metrics=[Metric("loss", 1.0, T0, 0)])
    with pytest.raises(MlflowException, match="not found"):
        sql_store.log_batch(store, "0" * 32, metrics=[Metric("loss", 1.0, T0, 0)])
    too_long = [Param("k" * 300, "v")]
    with pytest.raises(MlflowException) as theirs:
        store.log_batch(run_id, metrics=[], params=too_long, tags=[])
    with pytest.raises(MlflowException) as ours:
        sql_store.log_batch(store, run_id, params=too_long)
    assert str(ours.value) == str(theirs.value)


def test_what_it_cannot_serve_goes_through_mlflow(
    client: MlflowClient, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(client)
    assert sql_store.supports(store, [RunTag("hpo.state", "COMPLETE")])
    # The run's name is a column too: MLflow's own log_batch keeps the two in step.
    assert not sql_store.supports(store, [RunTag("mlflow.runName", "x")])
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert not sql_store.supports(MlflowClient(f"file://{tmp_path}/mlruns")._tracking_client.store)


def _run_fields(client: MlflowClient, run_id: str) -> dict[str, Any]:
    run = client.get_run(run_id)
    info = run.info
    return {
        "name": info.run_name,
        "status": info.status,
        "lifecycle": info.lifecycle_stage,
        "user": info.user_id,
        "experiment": info.experiment_id,
        "end_time": info.end_time,
        "artifact_uri": info.artifact_uri.replace(run_id, "<id>"),
        "tags": run.data.tags,
        "in_search": run_id in {r.info.run_id for r in client.search_runs([info.experiment_id])},
    }


def test_a_run_is_created_as_mlflow_creates_it(client: MlflowClient) -> None:
    exp = client.create_experiment("e")
    tags = {"mlflow.parentRunId": "p" * 32, "hpo.trial": "3"}
    theirs = client.create_run(exp, run_name="trial-0003", tags=tags).info
    run_id, artifact_uri = sql_store.create_run(_store(client), exp, "trial-0003", tags)
    assert _run_fields(client, run_id) == _run_fields(client, theirs.run_id)
    assert artifact_uri == client.get_run(run_id).info.artifact_uri
    assert client.get_run(run_id).info.start_time >= theirs.start_time
    # It takes what a run takes.
    client.log_batch(run_id, metrics=[Metric("loss", 1.0, T0, 0)])
    client.set_terminated(run_id, "FINISHED")
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_logged_model_is_created_as_mlflow_creates_it(client: MlflowClient) -> None:
    exp = client.create_experiment("e")
    run_id = client.create_run(exp).info.run_id
    params, tags = {"lr": "0.1"}, {"hpo.trial": "1"}
    theirs = client.create_logged_model(
        exp, name="model", source_run_id=run_id, params=params, tags=tags
    )
    model_id = sql_store.new_logged_model(
        _store(client), exp, "model", run_id, params, tags
    ).model_id
    ours = client.get_logged_model(model_id)
    theirs = client.get_logged_model(theirs.model_id)

    def fields(m: Any) -> dict[str, Any]:
        return {
            "name": m.name,
            "status": m.status,
            "experiment": m.experiment_id,
            "source_run": m.source_run_id,
            "params": m.params,
            "tags": m.tags,
            "location": m.artifact_location.replace(m.model_id, "<id>"),
        }

    assert model_id.startswith("m-")
    assert fields(ours) == fields(theirs)
    found = client.search_logged_models([exp], filter_string="tags.`hpo.trial` = '1'")
    assert {m.model_id for m in found} == {model_id, theirs.model_id}


def test_a_missing_or_deleted_experiment_is_refused_with_mlflows_message(
    client: MlflowClient,
) -> None:
    store = _store(client)
    exp = client.create_experiment("gone")
    client.delete_experiment(exp)
    for experiment in (exp, "987654"):
        with pytest.raises(MlflowException) as theirs:
            store.create_run(experiment, "unknown", T0, [], "x")
        with pytest.raises(MlflowException) as ours:
            sql_store.create_run(store, experiment, "x", {})
        assert str(ours.value) == str(theirs.value)
        with pytest.raises(MlflowException) as ours:
            sql_store.new_logged_model(store, experiment, "model", None, {}, {})
        assert str(ours.value) == str(theirs.value)


def test_a_run_is_ended_as_mlflow_ends_it(client: MlflowClient) -> None:
    from mlflow.entities import RunStatus

    exp = client.create_experiment("e")
    store = _store(client)
    theirs = client.create_run(exp, run_name="r").info.run_id
    ours = client.create_run(exp, run_name="r").info.run_id
    store.update_run_info(theirs, RunStatus.KILLED, end_time=T0, run_name=None)
    sql_store.end_run(store, ours, "KILLED", T0)
    assert _run_fields(client, ours) == _run_fields(client, theirs)
    assert client.get_run(ours).info.status == "KILLED"
    assert client.get_run(ours).info.end_time == T0
    with pytest.raises(Exception, match="Could not get run status"):  # MLflow's own check
        sql_store.end_run(store, ours, "NOT_A_STATUS", T0)
    client.delete_run(ours)
    with pytest.raises(MlflowException) as refused:
        sql_store.end_run(store, ours, "FINISHED", T0)
    with pytest.raises(MlflowException) as mlflows:
        store.update_run_info(ours, RunStatus.FINISHED, end_time=T0, run_name=None)
    assert str(refused.value) == str(mlflows.value)


def test_a_model_is_a_runs_output_as_mlflow_records_it(client: MlflowClient) -> None:
    from mlflow.entities import LoggedModelOutput

    exp = client.create_experiment("e")
    theirs, ours = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    model_id = client.create_logged_model(exp).model_id
    client.log_outputs(theirs, [LoggedModelOutput(model_id, step=7)])
    sql_store.log_model_output(_store(client), ours, model_id, 7)

    def outputs(run_id: str) -> list[tuple[str, int]]:
        found = client.get_run(run_id).outputs
        return [(o.model_id, o.step) for o in (found.model_outputs if found else [])]

    assert outputs(ours) == outputs(theirs) == [(model_id, 7)]

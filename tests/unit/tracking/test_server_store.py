"""hpo.tracking.server_store: the tracking server's store, MLflow's with hpo's log_batch and
create_logged_model; found by MLflow's registry for the ``hpo+`` URIs hpo runs its servers with."""

from __future__ import annotations

from typing import Any

import pytest
from mlflow.entities import LoggedModelParameter, LoggedModelTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from hpo.tracking import sql_store
from hpo.tracking.server import database_uri, server_store_uri
from hpo.tracking.server_store import ServerStore

T0 = 1_700_000_000_000


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def uri(request: pytest.FixtureRequest, tracking_uri: str) -> str:
    """A database made by hpo (its tables), plain."""
    from hpo.tracking.runs import open_client

    plain = tracking_uri if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    open_client(plain)
    return str(plain)


def test_the_hpo_uris_are_built_by_mlflows_registry(uri: str, tmp_path: Any) -> None:
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    served = server_store_uri(uri)
    assert served == "hpo+" + uri and database_uri(served) == uri
    store = _tracking_store_registry.get_store(served, str(tmp_path))
    assert type(store) is ServerStore and store.db_uri == uri
    assert sql_store.supports(store)
    # Any other store is left as it is.
    assert server_store_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert server_store_uri("file:///tmp/mlruns") == "file:///tmp/mlruns"


def _rows(store: SqlAlchemyStore, run_id: str) -> dict[str, Any]:
    run = store.get_run(run_id)
    histories = {
        key: sorted((m.step, m.timestamp, m.value) for m in store.get_metric_history(run_id, key))
        for key in run.data.metrics
    }
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    return {
        "latest": run.data.metrics,
        "params": run.data.params,
        "tags": tags,
        "histories": histories,
        "name": run.info.run_name,
    }


def test_log_batch_stores_what_mlflows_stores(uri: str, tmp_path: Any) -> None:
    ours, theirs = (
        ServerStore(server_store_uri(uri), str(tmp_path)),
        SqlAlchemyStore(uri, str(tmp_path)),
    )
    exp = theirs.create_experiment("e")
    runs = {
        side: store.create_run(exp, "u", T0, [], "r").info.run_id
        for side, store in (("ours", ours), ("theirs", theirs))
    }
    metrics = [Metric("loss", 1.0 / s, T0 + s, s) for s in range(1, 4)]
    metrics.append(Metric("loss", 0.5, T0 + 2, 2))  # a repeat: stored once
    batch = (metrics, [Param("lr", "0.1")], [RunTag("hpo.state", "COMPLETE")])
    for _ in range(2):  # a batch sent twice
        ours.log_batch(runs["ours"], *batch)
        theirs.log_batch(runs["theirs"], *batch)
    # A run's name is a column too: that batch goes through MLflow's own log_batch.
    renamed = ([], [], [RunTag("mlflow.runName", "renamed")])
    ours.log_batch(runs["ours"], *renamed)
    theirs.log_batch(runs["theirs"], *renamed)
    assert _rows(theirs, runs["ours"]) == _rows(theirs, runs["theirs"])
    assert _rows(theirs, runs["ours"])["name"] == "renamed"
    # What MLflow refuses is refused with its message.
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        ours.log_batch(runs["ours"], [], [Param("lr", "0.2")], [])


def test_create_logged_model_answers_what_mlflow_answers(uri: str, tmp_path: Any) -> None:
    ours, theirs = (
        ServerStore(server_store_uri(uri), str(tmp_path)),
        SqlAlchemyStore(uri, str(tmp_path)),
    )
    exp = theirs.create_experiment("e")
    run_id = theirs.create_run(exp, "u", T0, [], "r").info.run_id
    args = dict(
        name="model",
        source_run_id=run_id,
        tags=[LoggedModelTag("hpo.trial", "1")],
        params=[LoggedModelParameter("lr", "0.1")],
        model_type="classifier",
    )
    made = {"ours": ours.create_logged_model(exp, **args)}
    made["theirs"] = theirs.create_logged_model(exp, **args)

    def answer(model: Any) -> dict[str, Any]:
        fields = model.to_dictionary()
        for key in ("model_id", "creation_timestamp", "last_updated_timestamp"):
            fields.pop(key)
        fields["artifact_location"] = model.artifact_location.replace(model.model_id, "<id>")
        return fields

    assert answer(made["ours"]) == answer(made["theirs"])
    # What the answer said is what a read finds.
    assert answer(theirs.get_logged_model(made["ours"].model_id)) == answer(made["ours"])
    assert made["ours"].to_proto() is not None  # what a server sends back
    # No name (MLflow makes one up) and repeated keys go through MLflow's own.
    unnamed = ours.create_logged_model(exp)
    assert unnamed.name and theirs.get_logged_model(unnamed.model_id).name == unnamed.name
    twice = [LoggedModelTag("k", "1"), LoggedModelTag("k", "2")]
    with pytest.raises(Exception):  # noqa: B017 - MLflow's own refusal, whatever its type
        theirs.create_logged_model(exp, name="m", tags=twice)
    with pytest.raises(Exception):  # noqa: B017
        ours.create_logged_model(exp, name="m", tags=twice)


def test_a_model_output_is_logged_as_mlflow_logs_it(uri: str, tmp_path: Any) -> None:
    from mlflow.entities import LoggedModelOutput

    ours, theirs = (
        ServerStore(server_store_uri(uri), str(tmp_path)),
        SqlAlchemyStore(uri, str(tmp_path)),
    )
    exp = theirs.create_experiment("e")
    outputs = {}
    for side, store in (("ours", ours), ("theirs", theirs)):
        run_id = store.create_run(exp, "u", T0, [], side).info.run_id
        model_id = store.create_logged_model(exp, name="model", source_run_id=run_id).model_id
        store.log_outputs(run_id, [LoggedModelOutput(model_id, 7)])
        got = theirs.get_run(run_id).outputs.model_outputs
        outputs[side] = [(o.model_id == model_id, o.step) for o in got]
        # Two at once go through MLflow's own, in one transaction.
        two = [store.create_logged_model(exp, name="m", source_run_id=run_id) for _ in "ab"]
        store.log_outputs(run_id, [LoggedModelOutput(m.model_id, 8) for m in two])
        assert len(theirs.get_run(run_id).outputs.model_outputs) == 3
        theirs.delete_run(run_id)
        with pytest.raises(MlflowException, match="active"):  # MLflow's refusal, deleted run
            store.log_outputs(run_id, [LoggedModelOutput(model_id, 10)])
    assert outputs["ours"] == outputs["theirs"] == [(True, 7)]


def test_create_run_answers_what_mlflow_answers(uri: str, tmp_path: Any) -> None:
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    ours = ServerStore(server_store_uri(uri), str(tmp_path))
    theirs = SqlAlchemyStore(uri, str(tmp_path))
    exp = theirs.create_experiment("e")

    def answer(run: Any) -> dict[str, Any]:
        fields = run.to_dictionary()
        run_id = fields["info"].pop("run_id")
        fields["info"].pop("run_uuid", None)
        fields["info"]["artifact_uri"] = fields["info"]["artifact_uri"].replace(run_id, "<id>")
        return fields

    tags = [RunTag("mlflow.parentRunId", "p" * 32), RunTag("hpo.trial", "3")]
    for run_name, extra in (("trial-0003", []), (None, [RunTag(MLFLOW_RUN_NAME, "named")])):
        made = [s.create_run(exp, "ann", T0 + 5, tags + extra, run_name) for s in (ours, theirs)]
        assert answer(made[0]) == answer(made[1])
        # What the answer said is what a read finds, and the run takes what a run takes.
        read = answer(theirs.get_run(made[0].info.run_id))
        assert read.pop("outputs") == {"model_outputs": []}  # a read has them, create's answer not
        assert read == answer(made[0])
        ours.log_batch(made[0].info.run_id, [Metric("loss", 1.0, T0, 0)], [], [])
        assert made[0].to_proto() is not None  # what a server sends back
    # No name (MLflow makes one up), or two different ones (MLflow refuses), go through
    # MLflow's own.
    unnamed = ours.create_run(exp, "ann", T0, [], None)
    assert unnamed.info.run_name and theirs.get_run(unnamed.info.run_id).info.run_name
    with pytest.raises(MlflowException, match="different values"):
        ours.create_run(exp, "ann", T0, [RunTag(MLFLOW_RUN_NAME, "a")], "b")

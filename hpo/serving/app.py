"""``hpo serve``: a study's registered model over REST, taking raw rows as the data source read them.

MLflow's own model server would serve the network alone: it knows nothing of the scaler, the
imputer or the one-hot encoding the model was trained behind, so clients would have to
re-implement them. This small FastAPI app (FastAPI and uvicorn come with MLflow) loads the
``pt2`` model and its preprocessing (:mod:`hpo.serving.preprocessing`) from the registry and
answers MLflow's scoring protocol on ``POST /invocations``, so MLflow clients work unchanged:

* ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}``
* ``{"dataframe_records": [{"column": value, ...}, ...]}``
* ``{"instances": [...]}`` or ``{"inputs": [...]}``: rows of values in column order, or images.

The answer holds the predicted class names, the class probabilities and the class order.
``GET /health`` and ``GET /metadata`` (the model's study, trial, version and input columns) help
load balancers and clients.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

# At module level, not in create_app: with postponed annotations FastAPI resolves ``Request``
# in the module's namespace (a local import leaves it unresolved and the route asks for a
# query parameter named "request"). This module is only imported by ``hpo serve``.
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from hpo.errors import HpoError, TrackingError
from hpo.serving.preprocessing import Preprocessing, PreprocessingError

if TYPE_CHECKING:
    from torch import nn

#: Rows one request may hold; more is refused (413) rather than risking the server's memory.
MAX_ROWS = 10_000
#: Protocol keys, in the order they are looked for.
INPUT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")


@dataclass
class ServedModel:
    """A loaded model with its preprocessing and where it came from."""

    model: nn.Module
    preprocessing: Preprocessing
    #: Registry name, version, alias, and the version's lineage tags.
    info: dict[str, Any] = field(default_factory=dict)

    def predict(self, payload: Any) -> dict[str, Any]:
        """Class names and probabilities for a request body (see the module docstring)."""
        import pandas as pd
        import torch

        rows = _rows(payload)
        if isinstance(rows, dict):  # dataframe_split
            columns, data = rows.get("columns"), rows.get("data")
            if not isinstance(data, list):
                raise PreprocessingError("dataframe_split needs 'data': a list of rows")
            rows = pd.DataFrame(data, columns=columns)
        n = len(rows)
        if n == 0:
            raise PreprocessingError("no rows to predict")
        if n > MAX_ROWS:
            raise _TooLarge(f"{n} rows in one request; send at most {MAX_ROWS}")
        X = self.preprocessing.transform(rows)
        with torch.no_grad():
            proba = torch.softmax(self.model(torch.from_numpy(X)), dim=1).numpy()
        classes = self.preprocessing.classes
        return {
            "predictions": [classes[i] for i in proba.argmax(axis=1)],
            "probabilities": np.round(proba.astype(np.float64), 6).tolist(),
            "classes": classes,
        }


class _TooLarge(PreprocessingError):
    """A request with more rows than :data:`MAX_ROWS`."""


def _rows(payload: Any) -> Any:
    if not isinstance(payload, dict):
        raise PreprocessingError(
            f"the body must be a JSON object with one of {', '.join(INPUT_KEYS)}"
        )
    found = [k for k in INPUT_KEYS if k in payload]
    if len(found) != 1:
        raise PreprocessingError(
            f"the body needs exactly one of {', '.join(INPUT_KEYS)}; got {sorted(payload) or 'none'}"
        )
    rows = payload[found[0]]
    if found[0] == "dataframe_split":
        if not isinstance(rows, dict):
            raise PreprocessingError("dataframe_split must be an object with 'columns' and 'data'")
        return rows
    if not isinstance(rows, list):
        raise PreprocessingError(f"{found[0]} must be a list of rows")
    return rows


def load_served_model(
    name: str, tracking_uri: str, *, alias: str = "champion", version: str | None = None
) -> ServedModel:
    """The registered model ``name`` (at ``alias``, or ``version``) and its preprocessing.

    Raises :class:`TrackingError` with one clear line when the store, the model or the alias is
    not there, or the model was logged without hpo's preprocessing metadata.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from hpo.tracking.models import load_model_and_metadata
    from hpo.tracking.runs import _mask, _tracking_errors, absolute_store_uri, registry_uri

    tracking_uri = absolute_store_uri(tracking_uri)

    where = _mask(tracking_uri)
    client = MlflowClient(tracking_uri, registry_uri=registry_uri(tracking_uri))
    with _tracking_errors(f"looking up registered model '{name}'", tracking_uri):
        try:
            mv = (
                client.get_model_version(name, version)
                if version
                else client.get_model_version_by_alias(name, alias)
            )
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            known = sorted(m.name for m in client.search_registered_models(max_results=200))
            what = f"version {version}" if version else f"alias '{alias}'"
            raise TrackingError(
                f"registered model '{name}' has no {what} in {where} "
                f"(registered models: {', '.join(known) or 'none'}); a study registers its best "
                "model as it runs: hpo study start FILE"
            ) from None
    uri = f"models:/{mv.model_id}" if mv.model_id else str(mv.source)
    with _tracking_errors(f"loading {uri}", tracking_uri):
        model, metadata = load_model_and_metadata(uri, tracking_uri)
    spec = (metadata.get("hpo") or {}).get("preprocessing")
    if not spec:
        raise TrackingError(
            f"model '{name}' version {mv.version} in {where} has no preprocessing metadata "
            "(logged by an older hpo); retrain it with this version"
        )
    info = {
        "name": name,
        "version": str(mv.version),
        "alias": None if version else alias,
        "model_uri": uri,
        "run_id": mv.run_id,
        "lineage": {k: v for k, v in (mv.tags or {}).items() if k.startswith("hpo.")},
    }
    return ServedModel(model, Preprocessing.from_dict(spec), info)


def create_app(served: ServedModel) -> FastAPI:
    """The REST app around ``served`` (routes in the module docstring)."""
    app = FastAPI(title=f"hpo: {served.info.get('name', 'model')}", docs_url="/docs")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        pre = served.preprocessing
        return {
            **served.info,
            "input": {
                "kind": pre.kind,
                "columns": pre.columns,
                "shape": pre.spec.get("input_shape"),
                "layout": pre.spec.get("layout"),
            },
            "classes": pre.classes,
        }

    @app.post("/invocations")
    async def invocations(request: Request) -> JSONResponse:
        try:
            payload = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return JSONResponse({"error": f"the body is not JSON: {exc}"}, status_code=400)
        try:
            answer = served.predict(payload)
        except _TooLarge as exc:
            return JSONResponse({"error": str(exc)}, status_code=413)
        except PreprocessingError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(answer)

    app.add_api_route("/predict", invocations, methods=["POST"], include_in_schema=False)
    return app


def serve(served: ServedModel, host: str, port: int) -> None:
    """Run the app until interrupted; a port that is taken is one clear error."""
    import socket

    import uvicorn

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise HpoError(f"--port: cannot listen on {host}:{port}: {exc.strerror}") from None
    uvicorn.run(create_app(served), host=host, port=port, log_level="warning")

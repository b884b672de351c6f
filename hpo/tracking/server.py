"""How hpo runs an MLflow tracking server: ``hpo ui``, the team stack's ``mlflow`` service
(``docker-compose.yml``, checked against this by ``tests/test_compose.py``), the tests' and the
benchmarks' servers.

Measured on 2 cores (``mlflow server`` 3.17, the reference trial logged over HTTP,
``benchmarks/overhead.py``):

* one worker process: the default four answer each REST call on a reused connection in ~50 ms
  (responses written in two packets without TCP_NODELAY, uvicorn issue 3149), one in 8-11 ms;
* gunicorn with 4 threads, not uvicorn: uvicorn serves MLflow's Flask API through FastAPI's WSGI
  bridge, which cost the server 86-102 ms of CPU per trial (19 requests) against 64-82 ms;
  on 2 cores that CPU is taken from training (hpo's overhead per trial 0.42-0.47 of the training
  time against 0.31-0.42, alternating). The threads keep a long upload from holding up the
  other workers' calls. MLflow 3.17 warns that it recommends uvicorn; the endpoints only its
  FastAPI app serves (OpenTelemetry traces, the AI gateway, jobs) are not used by hpo.
* hpo's store on the server's database (:func:`store_options`,
  :mod:`hpo.tracking.server_store`): MLflow's, with hpo's one-transaction ``log_batch``,
  ``create_run``, ``create_logged_model`` and one model's ``log_outputs``. The server's CPU per
  reference trial 88-122 → 50-83 ms (alternating runs of a ``/tmp`` script, 10 trials each).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Options of ``mlflow server`` (after the stores and the address). Gunicorn's control socket
#: (new in gunicorn 26) would be one path in the user's home for every server on the machine.
SERVER_OPTIONS: tuple[str, ...] = (
    "--workers",
    "1",
    "--gunicorn-opts",
    "--threads 4 --no-control-socket",
)
#: Environment of the server: the job runner (1.7-3 GB of memory) serves features hpo does not
#: use; MLflow's advice to use uvicorn (see above) is not repeated at every start.
SERVER_ENV: dict[str, str] = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "PYTHONWARNINGS": "ignore:We recommend using uvicorn:FutureWarning",
}


def server_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` (the caller's environment) with :data:`SERVER_ENV`; warning filters the user set
    in ``PYTHONWARNINGS`` are kept, before hpo's."""
    env = {**base, **SERVER_ENV}
    if base.get("PYTHONWARNINGS"):
        env["PYTHONWARNINGS"] = f"{base['PYTHONWARNINGS']},{SERVER_ENV['PYTHONWARNINGS']}"
    return env


# -- the server's store ----------------------------------------------------------------------------
#: What is put in front of a database URI to have the server use hpo's store
#: (:class:`hpo.tracking.server_store.ServerStore`).
PREFIX = "hpo+"
#: The database URI schemes that store serves (with :data:`PREFIX`, the entry points of
#: ``pyproject.toml``).
SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2")


def server_store_uri(uri: str) -> str:
    """The backend store URI that has ``mlflow server`` use hpo's store on the database
    ``uri``; ``uri`` itself for any other store."""
    scheme = uri.split("://", 1)[0].lower()
    return PREFIX + uri if scheme in SCHEMES else uri


def database_uri(uri: str) -> str:
    """``uri`` without :data:`PREFIX`."""
    return uri[len(PREFIX) :] if uri.startswith(PREFIX) else uri


def store_options(uri: str) -> tuple[str, ...]:
    """``mlflow server``'s store options for the database (or other store) ``uri``: hpo's store
    on it (:func:`server_store_uri`), the model registry on the plain URI (MLflow's)."""
    return ("--backend-store-uri", server_store_uri(uri), "--registry-store-uri", uri)


def tracking_store(store_uri: str, artifact_uri: str | None = None) -> Any:
    """The builder of MLflow's registry of tracking stores for the ``hpo+`` schemes
    (``pyproject.toml``). MLflow loads it while ``mlflow.tracking`` is being imported: the store
    (which imports MLflow's) is imported when a store is built."""
    from hpo.tracking.server_store import ServerStore

    return ServerStore(store_uri, artifact_uri)

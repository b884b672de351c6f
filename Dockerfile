# syntax=docker/dockerfile:1
# The project's image: hpo workers, the one-shot init, the MLflow server and optuna-dashboard all
# run from it, so every service uses the same tested versions of Optuna, MLflow and psycopg (an
# Optuna storage is refused by an Optuna older than its schema; a separate dashboard image would
# lag behind).
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true

# torch first, from the CPU index: the PyPI wheel for Linux is the CUDA build, gigabytes of libraries
# a CPU worker never uses. Its own layer, so a change to hpo does not download it again.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /app
# Exact versions of everything else, before the source: this layer is rebuilt only when the lock
# changes. optuna-dashboard is in the lock too (the dashboard service).
COPY docker/requirements.lock docker/requirements.lock
RUN pip install -r docker/requirements.lock

COPY pyproject.toml README.md ./
COPY hpo ./hpo
# --no-deps: the lock above already holds every dependency, at the versions tested together.
RUN pip install --no-deps . && pip check

COPY docker ./docker
COPY studies /studies

# Non-root: a worker runs study-file-driven code and the servers need no privileges. /mlflow holds
# the proxied artifacts and /spool the workers' unsent trial runs (a named volume mounted there
# inherits this ownership on first use).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin hpo \
    && mkdir -p /mlflow/artifacts /spool \
    && chown -R hpo:hpo /mlflow /spool
USER hpo
WORKDIR /home/hpo

CMD ["hpo", "--help"]

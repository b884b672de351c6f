#!/bin/sh
# Start the MLflow tracking server with basic auth, its users kept in the same Postgres database as
# the runs (auth tables carry their own alembic_version_auth, so they do not clash).
#
# MLflow reads the auth store's URL only from an ini file (MLFLOW_AUTH_CONFIG_PATH), not from the
# environment, and that URL holds the database password: so the file is written here, at start,
# from the environment, readable by this user only, instead of being committed or baked into the
# image. The admin user and password come from MLFLOW_AUTH_ADMIN_USERNAME/PASSWORD and are used
# only the first time, to create the admin in an empty user store.
set -eu

: "${MLFLOW_BACKEND_STORE_URI:?MLFLOW_BACKEND_STORE_URI must be set}"

umask 077
config=$(mktemp -t mlflow-auth.XXXXXX.ini)
cat >"$config" <<INI
[mlflow]
# Authenticated users without an explicit grant may read every experiment; writing needs a grant
# (the creator of an experiment gets MANAGE on it) or the admin.
default_permission = READ
database_uri = ${MLFLOW_BACKEND_STORE_URI}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# Cache a verified credential for 5 minutes: otherwise every request pays a password-hash check
# (measured: 3 trials took 37 s instead of 11.5 s).
auth_cache_ttl_seconds = 300
INI
export MLFLOW_AUTH_CONFIG_PATH="$config"

# hpo's store on the runs' database (hpo.tracking.server.store_options): MLflow's, with hpo's
# one-transaction writes of metric batches, runs and LoggedModels, a third less server CPU per
# trial. The model registry stays on MLflow's own store of the same database.
exec mlflow server \
  --backend-store-uri "hpo+${MLFLOW_BACKEND_STORE_URI}" \
  --registry-store-uri "${MLFLOW_BACKEND_STORE_URI}" \
  "$@"

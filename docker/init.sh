#!/bin/sh
# One-shot set-up before any worker starts (the `init` service): fail early on a bad study file,
# bring MLflow's schema to this MLflow version, and create the study once.
#
# Creating the study here rather than in each worker matters: a new study gets its spec hash and
# its `enqueue` trials when it is first opened, and K workers opening a new study at the same moment
# could each enqueue the baseline trials. Workers then only ever join an existing study.
set -eu

: "${STUDY_FILE:?STUDY_FILE must be set (a file name under studies/)}"
study="/studies/${STUDY_FILE}"

hpo spec validate "$study"
# Safe to repeat: a no-op on an up-to-date schema, creates the tables on an empty database.
mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"
python /app/docker/init_study.py "$study"

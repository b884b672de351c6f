-- Run once by the postgres image on an empty data volume (as POSTGRES_USER, in POSTGRES_DB = hpo).
-- MLflow gets a database of its own: Optuna and MLflow both keep their schema version in a table
-- named alembic_version, so they cannot share one.
CREATE DATABASE mlflow;

"""Passwords in the storage URL and the tracking URI stay out of everything a study writes.

A study file names both stores with a password in the URL (the machine's Postgres trusts local
connections, so any password is accepted: enough to carry one). After a 2-trial study, the
password is in none of: the study's and trials' attributes, the parent and child runs' params and
tags, the experiment, ``hpo study export``'s CSV, or what the commands print.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from hpo.cli import main
from tests.conftest import PG_ADMIN_DSN

SPEC = """\
name: secret
data: {{source: sklearn, name: iris}}
train: {{epochs: 1, seed: 0}}
search: {{lr: {{type: float, low: 1.0e-3, high: 1.0e-1, log: true}}}}
pruner: {{name: none}}
trials: 2
storage: {storage}
tracking_uri: {tracking}
"""


@pytest.fixture
def mlflow_database(postgres_url: str) -> Iterator[str]:
    """A second fresh database (MLflow's), next to the storage's."""
    import psycopg

    name = f"hpo_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def with_password(url: str, password: str) -> str:
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def hpo(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.postgres
def test_a_password_in_the_urls_is_never_stored_or_shown(
    workdir: Path, postgres_url: str, mlflow_database: str
) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    storage = with_password(postgres_url, secret)
    tracking = with_password(mlflow_database, secret)
    spec = workdir / "secret.yaml"
    spec.write_text(SPEC.format(storage=storage, tracking=tracking))

    printed = hpo("study", "start", str(spec), "-q")
    printed += hpo("study", "show", "secret", "--storage", storage)
    printed += hpo("study", "list", "--storage", storage)
    printed += hpo("study", "export", "secret", "-o", "trials.csv", "--storage", storage)
    assert secret not in printed

    study = optuna.load_study(study_name="secret", storage=storage)
    assert len(study.trials) == 2
    assert "***" in study.user_attrs["hpo.spec_file"]  # the URLs are there, masked
    stored = [study.user_attrs, study._storage.get_study_system_attrs(study._study_id)]
    for t in study.trials:
        stored += [t.user_attrs, t.system_attrs, t.params]
    assert secret not in json.dumps(stored, default=str)

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("secret")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 3  # the parent and a child per trial
    logged = [experiment.tags, experiment.artifact_location]
    for run in runs:
        logged += [run.data.params, run.data.tags, run.info.artifact_uri]
    assert secret not in json.dumps(logged, default=str)

    assert secret not in (workdir / "trials.csv").read_text()


def test_a_worker_joining_by_name_is_asked_for_the_tracking_uri_it_cannot_read(
    workdir: Path,
) -> None:
    # `hpo worker --study NAME` finds the study's tracking URI in the storage, where its password
    # is masked: it asks for the URI instead of logging somewhere else.
    from hpo.spec import parse_spec
    from hpo.storage import mask_url
    from hpo.study import TRACKING_URI_ATTR, open_study

    secret = f"pw-{uuid.uuid4().hex}"
    storage = f"sqlite:///{workdir}/hpo.db"
    text = SPEC.format(storage=storage, tracking=f"http://bob:{secret}@mlflow.example:5000")
    spec = parse_spec(text, source="secret.yaml")
    study = open_study(spec, storage, source="secret.yaml")
    study.set_user_attr(TRACKING_URI_ATTR, mask_url(str(spec.tracking_uri)))
    result = CliRunner().invoke(main, ["worker", "--study", "secret", "--storage", storage])
    assert result.exit_code == 2, result.output
    assert "whose password is not stored" in result.output
    assert "--tracking-uri" in result.output
    assert secret not in result.output

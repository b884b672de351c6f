"""The founding experiments' study files (studies/*.yaml), each run for 2 trials through the CLI.

Each check looks for what makes the study what it is, in MLflow as a user would: the chance-level
verdict on noise, the decision boundary on 2-D data, the predicted-class distribution on digits,
the test accuracy of the tuned tabular model, the family comparison, the learned activation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from hpo.cli import main

STUDIES = Path(__file__).parents[2] / "studies"
TRIALS = 2


def artifacts(client: MlflowClient, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id)}


def check_noise(
    study: optuna.Study, ran: list[FrozenTrial], client: MlflowClient, parent: str
) -> None:
    # trial 0 is the original Keras configuration: Dense 128 ReLU → Dropout 0.5 → Dense 64 ReLU → 10
    assert ran[0].params == {
        "depth": 2,
        "width": 128,
        "width_decay": 0.5,
        "dropout": 0.5,
        "dropout_layers": "first",
        "lr": 1e-3,
        "batch_size": 32,
        "optimizer": "adam",
    }
    assert client.get_run(parent).data.tags["hpo.chance_level"] == "chance"


def check_moons(
    study: optuna.Study, ran: list[FrozenTrial], client: MlflowClient, parent: str
) -> None:
    assert [t.params["batch_size"] for t in ran] == ["full", 10]
    for trial in ran:
        assert "decision_boundary.png" in artifacts(client, trial.user_attrs["mlflow_run_id"])


def check_digits(
    study: optuna.Study, ran: list[FrozenTrial], client: MlflowClient, parent: str
) -> None:
    for trial in ran:
        names = artifacts(client, trial.user_attrs["mlflow_run_id"])
        assert {"prediction_distribution.svg", "confusion_matrix.svg"} <= names
        assert "decision_boundary.png" not in names  # 64 features: no boundary to draw


def check_tabular(
    study: optuna.Study, ran: list[FrozenTrial], client: MlflowClient, parent: str
) -> None:
    metrics = client.get_run(parent).data.metrics
    assert 0.0 < metrics["test_accuracy"] <= 1.0
    best_run = client.get_run(study.best_trial.user_attrs["mlflow_run_id"])
    assert best_run.data.metrics["test_accuracy"] == metrics["test_accuracy"]


def check_families(
    study: optuna.Study, ran: list[FrozenTrial], client: MlflowClient, parent: str
) -> None:
    assert [t.params["family"] for t in ran] == ["cnn", "vgg"]
    assert {"family_comparison.csv", "family_comparison.html"} <= artifacts(client, parent)


def check_learnable(
    study: optuna.Study, ran: list[FrozenTrial], client: MlflowClient, parent: str
) -> None:
    assert ran[0].params["activation"] == "learnable"
    learnable = client.get_run(ran[0].user_attrs["mlflow_run_id"])
    for key in ("act1_k0", "act1_k1", "act2_k0", "act2_k1", "val_f1"):
        assert key in learnable.data.metrics, key
    assert "learning_curves.svg" in artifacts(client, learnable.info.run_id)
    fixed = client.get_run(ran[1].user_attrs["mlflow_run_id"])
    assert not any(key.startswith("act") for key in fixed.data.metrics)
    assert [m.step for m in client.get_metric_history(learnable.info.run_id, "train_loss")] == list(
        range(1, 51)
    )


CHECKS: dict[str, Callable[[optuna.Study, list[FrozenTrial], MlflowClient, str], None]] = {
    "mlp_random_noise": check_noise,
    "moons_backprop": check_moons,
    "digits_mlp": check_digits,
    "tabular_mlp_tuning": check_tabular,
    "cnn_vgg_resnet": check_families,
    "learnable_activation": check_learnable,
}


@pytest.mark.slow
@pytest.mark.parametrize("stem", list(CHECKS))
def test_founding_study_runs_and_logs_what_makes_it(stem: str, workdir: Path) -> None:
    path = STUDIES / f"{stem}.yaml"
    storage, tracking = f"sqlite:///{workdir}/hpo.db", f"sqlite:///{workdir}/mlflow.db"
    result = CliRunner().invoke(
        main,
        [
            "study",
            "start",
            str(path),
            "--n-trials",
            str(TRIALS),
            "--storage",
            storage,
            "--tracking-uri",
            tracking,
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    # Enqueued trials beyond the 2 run wait in the storage for a later run.
    ran = [t for t in study.trials if t.state != TrialState.WAITING]
    assert [t.state for t in ran] == [TrialState.COMPLETE] * TRIALS
    CHECKS[stem](study, ran, MlflowClient(tracking), study.user_attrs["mlflow_parent_run_id"])

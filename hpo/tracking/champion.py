"""The study's best model in the MLflow Model Registry, under the study's name, alias ``champion``.

When a trial beats the current champion, its logged model becomes a new version of the registered
model ``<study name>`` and the alias ``champion`` moves to it. The version carries its lineage
(study, trial, run, spec hash, seed, metric and value) as tags, so anyone who loads
``models:/<study>@champion`` can trace it back to the trial that made it.

Workers of one study promote concurrently; two that finish a new best at the same moment may set
the alias in either order. :func:`promote` is therefore also called once more at the study's end,
under the study lock, with the study's real best trial (:func:`hpo.study.summarize_study`), which
settles the alias on it. Registering costs a few store calls, only when the best changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from hpo.tracking.runs import StudyTracker

#: The alias of the study's best model.
CHAMPION_ALIAS = "champion"


@dataclass(frozen=True)
class Champion:
    """A registered version of the study's model and the trial it came from."""

    name: str
    version: str
    trial: int
    value: float
    model_id: str | None
    run_id: str | None


def _better(new: float, old: float, direction: str) -> bool:
    if math.isnan(old):
        return not math.isnan(new)
    return new > old if direction == "maximize" else new < old


def current_champion(tracker: StudyTracker, name: str | None = None) -> Champion | None:
    """The version the alias points at, or None if the study has no champion yet."""
    from mlflow.exceptions import MlflowException

    from hpo.tracking.runs import _tracking_errors

    name = name or tracker.study_name
    with _tracking_errors(f"reading the champion of '{name}'", tracker.tracking_uri):
        try:
            version = tracker.client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
    tags = version.tags or {}
    return Champion(
        name=name,
        version=str(version.version),
        trial=int(tags.get("hpo.trial", -1)),
        value=float(tags.get("hpo.value", "nan")),
        model_id=version.model_id,
        run_id=version.run_id,
    )


def promote(
    tracker: StudyTracker,
    trial: optuna.trial.FrozenTrial,
    *,
    metric: str,
    direction: str,
    lineage: dict[str, Any],
) -> Champion | None:
    """Make ``trial``'s model the champion if it beats the current one; return the new champion.

    Returns None (and registers nothing) when the trial has no model, or the champion is this
    trial already or at least as good. ``lineage`` adds tags (spec hash, seed …).
    """
    from mlflow.exceptions import MlflowException

    from hpo.tracking.models import global_tracking_uri
    from hpo.tracking.runs import _tracking_errors

    model_uri = trial.user_attrs.get("model_uri")
    if trial.value is None or not model_uri:
        return None
    value = float(trial.value)
    name = tracker.study_name
    current = current_champion(tracker, name)
    if current is not None and (
        current.trial == trial.number or not _better(value, current.value, direction)
    ):
        return None
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    run_id = trial.user_attrs.get("mlflow_run_id")
    tags = {
        "hpo.study": name,
        "hpo.trial": str(trial.number),
        "hpo.metric": metric,
        "hpo.direction": direction,
        "hpo.value": repr(value),
        **{f"hpo.{k}": str(v) for k, v in lineage.items()},
    }
    client = tracker.client
    with _tracking_errors(f"registering the champion of '{name}'", tracker.tracking_uri):
        try:
            client.create_registered_model(
                name,
                tags={"hpo.study": name},
                description=(
                    f"Best models of the hpo study '{name}' ({direction} {metric}); "
                    f"the alias '{CHAMPION_ALIAS}' marks the current best."
                ),
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # MLflow's SQL registry looks the run up through a client of the *global* tracking URI
        # (MLflow 3.17), which would open (and create) ./mlflow.db: point it at the study's store.
        with global_tracking_uri(tracker.tracking_uri):
            version = client.create_model_version(
                name,
                source=model_uri,
                run_id=run_id,
                tags=tags,
                model_id=model_id,
                description=f"trial {trial.number}: {metric} = {value:.6g}",
            )
        client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version.version))
        if run_id:
            client.set_tag(run_id, "hpo.champion_version", str(version.version))
    return Champion(name, str(version.version), trial.number, value, model_id, run_id)

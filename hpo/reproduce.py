"""``hpo trial reproduce``: retrain a finished trial from its stored parameters and seed.

The study keeps the file it was started with (:func:`hpo.study.stored_spec`) and every trial its
parameters, so a trial can be trained again exactly as the objective trained it, through the
same :func:`hpo.objective.fit_and_evaluate`. On the same machine and thread count a trial
reproduces to the last digit; elsewhere floating-point summation order may move the metric a
little, which the report shows as the difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hpo.errors import HpoError


@dataclass
class Reproduction:
    """A trial's stored metrics next to the ones its retraining gave."""

    study: str
    number: int
    family: str
    params: dict[str, Any]
    device: str
    #: metric name → (original, reproduced); the original is None where the trial did not keep it.
    metrics: dict[str, tuple[float | None, float]] = field(default_factory=dict)
    #: The study's objective metrics (the first is the one the trial was judged on).
    objective: list[str] = field(default_factory=list)

    def max_abs_difference(self) -> float:
        """The largest |reproduced − original| over the objective metrics (0 if none kept)."""
        diffs = [
            abs(new - old)
            for name in self.objective
            for old, new in [self.metrics.get(name, (None, math.nan))]
            if old is not None
        ]
        return max(diffs, default=0.0)


def reproduce_trial(
    name: str, number: int, storage_url: str, *, device: str | None = None
) -> Reproduction:
    """Retrain trial ``number`` of study ``name`` and compare its metrics with the stored ones.

    ``device`` overrides the study file's ``train.device``. Only finished trials with stored
    parameters can be reproduced; a pruned trial is retrained for the full epoch budget.
    """
    from optuna.trial import TrialState

    from hpo.objective import fit_and_evaluate, trial_values
    from hpo.study import load_study, prepare_data, stored_spec
    from hpo.training.device import resolve_device
    from hpo.training.threads import configure_threads

    study = load_study(name, storage_url)
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    trial = by_number.get(number)
    if trial is None:
        last = max(by_number, default=-1)
        raise HpoError(
            f"trial {number}: study '{name}' has no such trial (trials 0 to {last})"
            if last >= 0
            else f"trial {number}: study '{name}' has no trials yet"
        )
    if trial.state in (TrialState.RUNNING, TrialState.WAITING):
        raise HpoError(
            f"trial {number} of study '{name}' is {trial.state.name.lower()}; "
            "only finished trials can be reproduced"
        )
    spec = stored_spec(study)
    source = f"study '{name}'"
    values, family, train_params, family_params = trial_values(spec, trial.params)
    data = prepare_data(spec, source)
    dev = resolve_device(device or spec.train.device)
    configure_threads(spec.train.threads, workers=1)
    fitted = fit_and_evaluate(spec, data, family, train_params, family_params, dev)

    out = Reproduction(
        study=name,
        number=number,
        family=family,
        params=values,
        device=str(dev),
        objective=list(spec.objective_metrics),
    )
    stored = dict(trial.user_attrs)
    if trial.values is not None:
        stored.update(zip(spec.objective_metrics, trial.values, strict=False))
    shown = [*spec.objective_metrics]
    shown += [m for m in ("val_accuracy", "val_loss", "val_f1") if m not in shown]
    for metric in shown:
        if metric not in fitted.metrics:
            continue
        old = stored.get(metric)
        out.metrics[metric] = (
            float(old) if isinstance(old, (int, float)) else None,
            float(fitted.metrics[metric]),
        )
    return out

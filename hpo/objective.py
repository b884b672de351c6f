"""One trial: suggest → build the model → train (pure torch) → evaluate → log to the trial's run.

The training loop knows nothing of Optuna or MLflow; this module connects them through two
callbacks: pruning (``trial.report`` / ``should_prune`` per epoch) and tracking (per-epoch metrics).
The MLflow run's status mirrors the trial's: COMPLETE → FINISHED, PRUNED → KILLED, FAIL → FAILED.

A trial keeps training when the storage cannot take its writes: the database is unreachable for a
moment, or another worker already failed the trial as stale (no heartbeat during an outage longer
than the grace period). Its user attributes are kept in :attr:`Objective.attrs` as well, so the
worker loop (:mod:`hpo.worker`) can write them later or file the result under a new trial: a
live trial's result is never thrown away because of the storage.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna

from hpo.models import FAMILIES
from hpo.models.base import count_parameters
from hpo.space import suggest, suggestion_order
from hpo.spec import FAMILY_PARAM, StudySpec
from hpo.tracking.runs import boundary_inputs
from hpo.tracking.spool import ModelInputs, PlotInputs
from hpo.training.callbacks import Callback
from hpo.training.config import TrainParams
from hpo.training.loop import (
    TrainingDiverged,
    TrainResult,
    predict_proba,
    seed_everything,
    train,
)
from hpo.training.metrics import classification_metrics
from hpo.trial_writes import report, write_trial

if TYPE_CHECKING:
    import numpy as np
    import torch

    from hpo.data.base import Dataset
    from hpo.tracking.runs import StudyTracker, TrialRun

#: Per-epoch metrics the loop reports; others are only known after evaluation.
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
#: Seconds between two writes of a running trial's reported values (and with its end).
REPORT_FLUSH_SECONDS = 5.0
#: Trial user attribute holding the MLflow run id of the trial.
RUN_ID_ATTR = "mlflow_run_id"
#: What the storage raises when a write cannot be made: the trial was already finished by someone
#: else (stale), or the database is unreachable (Optuna wraps SQLAlchemy's errors).
STORAGE_WRITE_ERRORS: tuple[type[Exception], ...] = (
    optuna.exceptions.UpdateFinishedTrialError,
    optuna.exceptions.StorageInternalError,
)


def split_params(family: str, values: Mapping[str, Any]) -> tuple[TrainParams, Any]:
    """Split a trial's values into training and family hyperparameters, with defaults filled in.

    Values that belong to neither (a knob of another family in a family-searching study) are
    ignored here; they are still logged with the trial.
    """
    params_model = FAMILIES.get(family).Params
    train_values = {k: v for k, v in values.items() if k in TrainParams.model_fields}
    family_values = {k: v for k, v in values.items() if k in params_model.model_fields}
    return TrainParams(**train_values), params_model(**family_values)


class _PruningCallback(Callback):
    """Gives the epoch's objective proxy to the pruner and raises ``TrialPruned`` when told.

    The value is recorded on the trial (:func:`hpo.trial_writes.report`), where the pruner reads
    it, and written to the storage with others every :data:`REPORT_FLUSH_SECONDS` and when the
    trial ends (by the worker loop, with the trial's attributes): not one write per epoch.
    """

    def __init__(self, trial: optuna.Trial, metric: str, objective: Objective) -> None:
        self.trial = trial
        self.metric = metric
        self.objective = objective
        self._flushed_at = time.monotonic()

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        value = metrics[self.metric]
        if math.isfinite(value) and report(self.trial, epoch, value):
            self.objective.unsaved_reports[epoch] = float(value)
        try:
            if time.monotonic() - self._flushed_at >= REPORT_FLUSH_SECONDS:
                self._flushed_at = time.monotonic()
                self.objective.flush_reports(self.trial)
            prune = self.trial.should_prune()
        except STORAGE_WRITE_ERRORS:
            # The storage is away or the trial was failed as stale: train on without a pruning
            # decision for this epoch; the worker files the result when the trial ends.
            return
        if prune:
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({self.metric}={value:.4g})")


class _TrackingCallback(Callback):
    def __init__(self, run: TrialRun) -> None:
        self.run = run

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.run.log_epoch(epoch, metrics)


class Objective:
    """The callable Optuna optimises: one instance per process, reused by every trial."""

    def __init__(
        self,
        spec: StudySpec,
        data: Dataset,
        device: torch.device,
        tracker: StudyTracker,
    ) -> None:
        self.spec = spec
        self.data = data
        self.device = device
        self.tracker = tracker
        self.metrics = spec.objective_metrics
        self.order = suggestion_order(spec.search)
        self.prune_metric = self._prune_metric()
        #: User attributes of the current trial, also kept here (see the module docstring).
        self.attrs: dict[str, Any] = {}
        #: Names in :attr:`attrs` not written to the storage yet.
        self.unsaved: set[str] = set()
        #: Intermediate values reported (for the pruner) and not written yet, by step.
        self.unsaved_reports: dict[int, float] = {}
        #: Ctrl-C came after the trial's result was complete: record it, then stop.
        self.interrupted = False
        #: Stored with every model: how to turn raw rows into its input (see :mod:`hpo.serving`).
        self.model_metadata = model_metadata(spec, data)

    def _set_attr(self, trial: optuna.Trial, key: str, value: Any) -> None:
        """Record a user attribute of the trial: written with the trial's end, by the worker
        loop, in one transaction with the others (the run's id is also written as soon as the
        run exists: :meth:`_run_opened`)."""
        self.attrs[key] = value
        self.unsaved.add(key)

    def flush_reports(self, trial: optuna.Trial) -> None:
        """Write the values reported so far (a long trial's curve, live in the dashboard)."""
        if self.unsaved_reports:
            write_trial(
                trial.study._storage, trial._trial_id, intermediate_values=self.unsaved_reports
            )
            self.unsaved_reports = {}

    def ready(self) -> None:
        """Before a trial is claimed: a tracking store seen away must answer again (see
        :meth:`hpo.tracking.runs.StudyTracker.ensure_reachable`)."""
        self.tracker.ensure_reachable()

    def _prune_metric(self) -> str | None:
        """The per-epoch value reported for pruning (single-objective studies only)."""
        if self.spec.multi_objective or self.spec.pruner_spec.name == "none":
            return None
        metric = self.metrics[0]
        if metric in EPOCH_METRICS:
            return metric
        # A metric only known after evaluation (F1, AUC …): prune on the validation metric that
        # moves the same way.
        direction = self.spec.objective_directions[0]
        return "val_accuracy" if direction == "maximize" else "val_loss"

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        spec = self.spec
        self.attrs, self.unsaved, self.unsaved_reports = {}, set(), {}
        self.interrupted = False
        values = suggest(trial, spec.search, spec.fixed, self.order)
        family = str(values.get(FAMILY_PARAM, spec.model.family))
        train_params, family_params = split_params(family, values)
        logged = {
            FAMILY_PARAM: family,
            **train_params.model_dump(),
            **family_params.model_dump(),
            **values,
            "epochs": spec.train.epochs,
            "seed": spec.train.seed,
        }
        # Against a tracking server the run and its LoggedModel are created while the trial
        # trains (the trial waits for them only at its end); the run's id is written to the
        # trial as soon as it exists.
        background = self.tracker.opens_in_background
        run = self.tracker.start_trial(
            trial.number,
            logged,
            tags={"hpo.device": str(self.device), "hpo.family": family},
            background=background,
            model=background,
            on_open=lambda run_id: self._run_opened(trial, run_id),
        )
        self._set_attr(trial, "family", family)
        try:
            return self._train_and_log(trial, run, family, train_params, family_params)
        except TrainingDiverged as exc:
            # A diverging learning rate is a property of the point in the search space, not a
            # crash: prune it with the reason and let the study go on.
            reason = str(exc)
            self._set_attr(trial, "pruned_reason", reason)
            run.end("PRUNED", reason)
            raise optuna.TrialPruned(reason) from None
        except optuna.TrialPruned as exc:
            self._set_attr(trial, "pruned_reason", str(exc) or "pruned")
            run.end("PRUNED")
            raise
        except BaseException as exc:  # also Ctrl-C: never leave the run RUNNING
            error = (
                "interrupted"
                if isinstance(exc, KeyboardInterrupt)
                else f"{type(exc).__name__}: {exc}"
            )
            self._set_attr(trial, "error", error[:2000])
            run.end("FAIL", error)
            raise
        finally:
            if run.open:  # also with the trial's end (the early write may not have got through)
                self._set_attr(trial, RUN_ID_ATTR, run.run_id)

    def _run_opened(self, trial: optuna.Trial, run_id: str) -> None:
        """In the thread that opens the trial's run: its id goes to the trial at once, for the
        worker that fails this trial if this worker dies (it closes the run)."""
        with contextlib.suppress(*STORAGE_WRITE_ERRORS):  # else written with the trial's end
            write_trial(trial.study._storage, trial._trial_id, user_attrs={RUN_ID_ATTR: run_id})

    def _train_and_log(
        self,
        trial: optuna.Trial,
        run: TrialRun,
        family: str,
        train_params: TrainParams,
        family_params: Any,
    ) -> float | list[float]:
        spec, data = self.spec, self.data
        callbacks: list[Callback] = [_TrackingCallback(run)]
        if self.prune_metric is not None:
            callbacks.append(_PruningCallback(trial, self.prune_metric, self))
        fitted = fit_and_evaluate(
            spec, data, family, train_params, family_params, self.device, callbacks
        )
        final = fitted.metrics
        run.log_final(final)
        # Kept with the trial too, so listings and family comparisons need no MLflow round trip.
        for key in (
            "val_accuracy",
            "val_f1",
            "val_loss",
            "val_roc_auc",
            "n_params",
            "train_seconds",
        ):
            self._set_attr(trial, key, final[key])
        # The plots and the model are drawn, exported and uploaded when the run ends, from the
        # spool (hpo.tracking.finisher; in the background while the next trial trains on a GPU):
        # here they are only collected.
        run.attach_plots(
            PlotInputs(
                y_true=data.y_val,
                proba=fitted.proba,
                classes=list(data.classes),
                history=list(fitted.result.history),
                prediction_counts=fitted.result.val_prediction_counts,
                boundary=boundary_inputs(data),
                feature_names=list(data.feature_names) if data.feature_names else None,
            )
        )
        model = fitted.model.cpu()
        model_uri = run.attach_model(
            ModelInputs(
                family=family,
                family_params=family_params.model_dump(mode="json"),
                input_shape=list(data.input_shape),
                n_classes=data.n_classes,
                state_dict=model.state_dict(),
                example=data.X_train[:5],
                metadata=self.model_metadata,
                params={},
                tags={},
                step=0,
            )
        )
        if model_uri:
            self._set_attr(trial, "model_uri", model_uri)
        values = [final[m] for m in self.metrics]
        bad = [m for m, v in zip(self.metrics, values, strict=True) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"objective {bad[0]} is not a finite number ({final[bad[0]]})")
        try:
            run.end("COMPLETE")
        except KeyboardInterrupt:
            if run.state != "COMPLETE":
                raise
            # Ctrl-C while the run was being sent: the trial's result stands and its run waits
            # in the spool; the worker records the result, then stops (see `interrupted`).
            self.interrupted = True
        return values[0] if len(values) == 1 else values


@dataclass
class FittedTrial:
    """A trained model and what it scored on the validation split."""

    model: torch.nn.Module
    result: TrainResult
    #: Class probabilities on the validation split.
    proba: np.ndarray
    #: ``val_*`` metrics, ``n_params``, ``train_seconds``, ``samples_per_second``,
    #: ``inference_ms`` and the learned activation parameters, if any.
    metrics: dict[str, float]


def trial_values(
    spec: StudySpec, params: Mapping[str, Any]
) -> tuple[dict[str, Any], str, TrainParams, Any]:
    """A finished trial's stored ``params`` as the objective saw them: with the study's fixed
    values, the family, and the training and family hyperparameters (for ``hpo trial reproduce``).
    """
    values = suggest(
        optuna.trial.FixedTrial(dict(params)),
        spec.search,
        spec.fixed,
        suggestion_order(spec.search),
    )
    family = str(values.get(FAMILY_PARAM, spec.model.family))
    train_params, family_params = split_params(family, values)
    return values, family, train_params, family_params


def fit_and_evaluate(
    spec: StudySpec,
    data: Dataset,
    family: str,
    train_params: TrainParams,
    family_params: Any,
    device: torch.device,
    callbacks: Sequence[Callback] = (),
) -> FittedTrial:
    """Seed, build, train and evaluate one configuration: the whole of a trial but its logging.

    Both the objective and ``hpo trial reproduce`` train through here, so a reproduced trial is
    trained exactly as the original was.
    """
    seed_everything(spec.train.seed)
    model = FAMILIES.get(family)().build(family_params, data.input_shape, data.n_classes)
    result = train(
        model,
        data,
        train_params,
        epochs=spec.train.epochs,
        device=device,
        seed=spec.train.seed,
        callbacks=list(callbacks),
    )
    # Inference latency: one warm-up batch (lazy kernels, cuDNN autotuning), then the whole
    # validation split timed, as milliseconds per sample.
    predict_proba(model, data.X_val[:64], device)
    started = time.perf_counter()
    proba = predict_proba(model, data.X_val, device)
    inference_ms = 1000.0 * (time.perf_counter() - started) / max(len(data.y_val), 1)
    final = {
        f"val_{k}": v for k, v in classification_metrics(data.y_val, proba, data.n_classes).items()
    }
    final["n_params"] = float(count_parameters(model))
    final["train_seconds"] = result.train_seconds
    final["samples_per_second"] = result.samples_per_second
    final["inference_ms"] = inference_ms
    final.update(_learned_activations(model))
    return FittedTrial(model, result, proba, final)


def model_metadata(spec: StudySpec, data: Dataset) -> dict[str, Any]:
    """What a served model needs besides its weights: the study, and the data's preprocessing
    and classes (as JSON, :func:`hpo.serving.preprocessing.describe`)."""
    from hpo.serving.preprocessing import describe

    return {
        "hpo": {
            "study": spec.name,
            "spec_hash": spec.identity_hash(),
            "data": {"source": spec.data.source, "name": data.name},
            "preprocessing": describe(data),
        }
    }


def _learned_activations(model: torch.nn.Module) -> dict[str, float]:
    from hpo.models.activations import learned_activation_params

    return learned_activation_params(model)

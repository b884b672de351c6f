"""``overhead_ratio_local`` / ``overhead_ratio_http``: what hpo adds to one trial.

For the reference trial (MLP 100 → 128 → dropout → 64 → 10, random 1,000 × 100 data, 10 classes,
20 epochs, batch 32) three things run interleaved in one process, with 1 torch thread:

* ``raw``: the same model trained by a minimal hand-written torch loop with per-epoch validation
  (:func:`benchmarks.loop.raw_train`): the pure training time;
* ``local``: one call of :class:`hpo.objective.Objective` on an Optuna trial (SQLite study, median
  pruner), with a :class:`hpo.tracking.runs.StudyTracker` on a local SQLite MLflow store: full
  logging (params, per-epoch metrics, final metrics, 3 plots, the ``pt2`` model);
* ``http``: the same against a real ``mlflow server`` on loopback (``--workers 1``, job runner off,
  SQLite backend in a temporary directory), stopped by process group at the end.

Overhead = (objective wall time − raw training time) / raw training time, medians of the repeats.
One warm-up trial per store runs first and is not counted: the first trial of a process pays
once for imports (scikit-learn metrics, matplotlib, ``torch.export``) that every later trial
reuses. ``study.tell`` is outside the objective and outside the figure (its time is kept too).

The breakdown comes from timers wrapped around hpo's own functions in this process (monkeypatched
for the benchmark only): creating the run, suggest, user attributes, training (minus the two
per-epoch callbacks), per-epoch logging, pruning reports, evaluation, final metrics, plots
(building the figures, rendering PNGs, uploading), the model (``torch.export`` inside
``mlflow.pytorch.log_model``, the rest of it, creating the LoggedModel) and ending the run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    Timers,
    interleave,
    load,
    median,
    mlflow_server,
    reference_spec_yaml,
    result,
    temp_dir,
)
from benchmarks.loop import raw_train

COMMAND = ".venv/bin/python -m benchmarks.run --only overhead_ratio_local"

#: label → (owner path, attribute); nested labels are reported under their parent.
PROBES: list[tuple[str, str, str]] = [
    ("objective", "hpo.objective:Objective", "__call__"),
    ("start_run_and_params", "hpo.tracking.runs:StudyTracker", "start_trial"),
    ("suggest", "hpo.objective", "suggest"),
    ("trial_user_attrs", "hpo.objective:Objective", "_set_attr"),
    ("train_call", "hpo.objective", "train"),
    ("epoch_logging", "hpo.objective:_TrackingCallback", "on_epoch_end"),
    ("pruning_reports", "hpo.objective:_PruningCallback", "on_epoch_end"),
    ("evaluate_predict", "hpo.objective", "predict_proba"),
    ("evaluate_metrics", "hpo.objective", "classification_metrics"),
    ("final_metrics", "hpo.tracking.runs:TrialRun", "log_final"),
    ("plots", "hpo.tracking.runs:TrialRun", "log_plots"),
    ("plots.figure_confusion", "hpo.tracking.plots", "confusion_matrix_figure"),
    ("plots.figure_roc", "hpo.tracking.plots", "roc_figure"),
    ("plots.figure_learning", "hpo.tracking.plots", "learning_curves_figure"),
    ("plots.png_render", "hpo.tracking.plots", "figure_png"),
    ("plots.log_pngs", "hpo.tracking.runs:TrialRun", "log_pngs"),
    ("model", "hpo.tracking.runs:TrialRun", "log_model"),
    ("model.create_logged_model", "mlflow.tracking:MlflowClient", "create_logged_model"),
    ("model.infer_signature", "mlflow.models", "infer_signature"),
    ("model.mlflow_log_model", "mlflow.pytorch", "log_model"),
    ("model.torch_export", "torch.export", "export"),
    ("end_run", "hpo.tracking.runs:TrialRun", "end"),
]
TOP_LEVEL = [
    "start_run_and_params",
    "suggest",
    "trial_user_attrs",
    "train_call",
    "evaluate_predict",
    "evaluate_metrics",
    "final_metrics",
    "plots",
    "model",
    "end_run",
]


def _resolve(path: str) -> Any:
    import importlib

    module, _, attr = path.partition(":")
    owner = importlib.import_module(module)
    return getattr(owner, attr) if attr else owner


def install_probes(timers: Timers) -> None:
    for label, owner, attr in PROBES:
        timers.wrap(_resolve(owner), attr, label)


def breakdown(seconds: dict[str, float]) -> dict[str, float]:
    """One trial's timers → a flat breakdown whose top-level parts add up to the objective."""
    get = seconds.get
    callbacks = get("epoch_logging", 0.0) + get("pruning_reports", 0.0)
    figures = sum(get(k, 0.0) for k in seconds if k.startswith("plots.figure_"))
    out = {
        "objective_total": get("objective", 0.0),
        "training": get("train_call", 0.0) - callbacks,
        "epoch_logging": get("epoch_logging", 0.0),
        "pruning_reports": get("pruning_reports", 0.0),
        "start_run_and_params": get("start_run_and_params", 0.0),
        "suggest": get("suggest", 0.0),
        "trial_user_attrs": get("trial_user_attrs", 0.0),
        "evaluate": get("evaluate_predict", 0.0) + get("evaluate_metrics", 0.0),
        "final_metrics": get("final_metrics", 0.0),
        "plots": get("plots", 0.0),
        "plots.build_figures": figures,
        "plots.render_png": get("plots.png_render", 0.0),
        "plots.upload": get("plots.log_pngs", 0.0) - get("plots.png_render", 0.0),
        "model": get("model", 0.0),
        "model.torch_export": get("model.torch_export", 0.0),
        "model.mlflow_log_model_rest": get("model.mlflow_log_model", 0.0)
        - get("model.torch_export", 0.0),
        "model.create_logged_model": get("model.create_logged_model", 0.0),
        "model.infer_signature": get("model.infer_signature", 0.0),
        "end_run": get("end_run", 0.0),
    }
    out["other"] = get("objective", 0.0) - sum(get(k, 0.0) for k in TOP_LEVEL)
    return out


class TrialBench:
    """One study + tracker on a store; :meth:`trial` runs one objective call and times it."""

    def __init__(self, workdir: Path, tracking_uri: str, name: str, timers: Timers) -> None:
        from hpo.spec import parse_spec
        from hpo.study import prepare_data, start_session

        workdir.mkdir(parents=True, exist_ok=True)
        self.spec = parse_spec(reference_spec_yaml(name, trials=10_000), source=name)
        self.data = prepare_data(self.spec, name)
        session = start_session(
            self.spec,
            source=name,
            storage_url=f"sqlite:///{workdir / 'optuna.db'}",
            tracking_uri=tracking_uri,
        )
        from hpo.objective import Objective

        self.study = session.study
        self.objective = Objective(self.spec, self.data, torch.device("cpu"), session.tracker)
        self.timers = timers
        self.breakdowns: list[dict[str, float]] = []
        self.tell_seconds: list[float] = []
        self.pruned = 0

    def trial(self) -> float:
        import optuna

        trial = self.study.ask()
        self.timers.reset()
        started = time.perf_counter()
        try:
            value: Any = self.objective(trial)
            state = optuna.trial.TrialState.COMPLETE
        except optuna.TrialPruned:
            value, state = None, optuna.trial.TrialState.PRUNED
            self.pruned += 1
        seconds = time.perf_counter() - started
        self.breakdowns.append(breakdown(self.timers.seconds))
        started = time.perf_counter()
        self.study.tell(trial, value, state=state)
        self.tell_seconds.append(time.perf_counter() - started)
        return seconds

    def median_breakdown(self) -> dict[str, float]:
        keys = self.breakdowns[0].keys() if self.breakdowns else []
        out = {k: median([b[k] for b in self.breakdowns]) for k in keys}
        out["optuna_tell_outside_objective"] = median(self.tell_seconds)
        return out


def measure(quick: bool, *, http: bool = True) -> dict[str, Any]:
    torch.set_num_threads(1)
    repeats = 5 if quick else 11
    timers = Timers()
    install_probes(timers)
    try:
        with temp_dir("hpo-bench-overhead-") as tmp:
            local = TrialBench(
                tmp / "local", f"sqlite:///{tmp / 'local' / 'mlflow.db'}", "overhead-local", timers
            )
            data = local.data
            raw_train(data, evaluate=True)  # warm-up
            local.trial()  # warm-up: one-off imports
            sides = {"raw": lambda: raw_train(data, evaluate=True), "local": local.trial}
            benches = {"local": local}
            server_cm = mlflow_server(tmp) if http else None
            if server_cm is not None:
                url = server_cm.__enter__()
                remote = TrialBench(tmp / "http", url, "overhead-http", timers)
                remote.trial()  # warm-up
                sides["http"] = remote.trial
                benches["http"] = remote
            for bench in benches.values():
                bench.breakdowns.clear()
                bench.tell_seconds.clear()
            before = load()
            try:
                figures = interleave(repeats, sides)
            finally:
                if server_cm is not None:
                    server_cm.__exit__(None, None, None)
    finally:
        timers.restore()
    raw_median = median(figures["raw"])
    out: dict[str, Any] = {}
    goals = {"local": "<= 0.10", "http": "<= 0.25"}
    for side, bench in benches.items():
        trial_median = median(figures[side])
        out[f"overhead_ratio_{side}"] = result(
            (trial_median - raw_median) / raw_median,
            goals[side],
            COMMAND.replace("local", side),
            {
                "trial_seconds": figures[side],
                "raw_training_seconds": figures["raw"],
                "trial_median_seconds": trial_median,
                "raw_training_median_seconds": raw_median,
                "overhead_seconds": trial_median - raw_median,
                "pruned_trials": bench.pruned,
                "breakdown_median_seconds": bench.median_breakdown(),
                "load_before_after": [before, load()],
            },
            note="one Objective call after one warm-up trial (one-off imports excluded) vs a "
            "minimal raw torch loop, interleaved, medians; 1 torch thread",
        )
    return out

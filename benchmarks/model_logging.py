"""``model_logging_speedup``: logging one trial's ``pt2`` model, MLflow's own way / hpo's way.

Both sides log the reference trial's model (MLP 100 → 128 → dropout → 64 → 10, new weights and
a new dropout rate for each model, as the trials of a study have) to a local SQLite MLflow store,
on a run that holds the reference trial's metrics (4 per-epoch curves of 20 points, 11 finals at
the last epoch), interleaved model by model, 1 torch thread:

* ``mlflow``: ``mlflow.pytorch.log_model(serialization_format="pt2", …)`` with explicit pip
  requirements and no serving check, as hpo called it before: a ``torch.export`` trace for each
  model, and the run's every metric history read back to link the last step's metrics;
* ``hpo``: :func:`hpo.tracking.models.log_pytorch_model` as the sender calls it: the trace of
  the architecture reused (:mod:`hpo.tracking.pt2_cache`), the step's metric rows passed in.

The value is the ratio of median seconds per model (recorded, no goal): the part of the sender's
work per trial that these two changes removed. One warm-up model per side is not counted.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from benchmarks.common import REFERENCE_EPOCHS, REFERENCE_MODEL, load, median, temp_dir

COMMAND = ".venv/bin/python -m benchmarks.run --only model_logging_speedup"
EPOCH_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
FINAL_KEYS = (
    "val_precision",
    "val_recall",
    "val_f1",
    "val_roc_auc",
    "n_params",
    "train_seconds",
    "samples_per_second",
    "inference_ms",
    "val_top2",
    "val_balanced_accuracy",
    "val_log_loss",
)


def _model(seed: int) -> torch.nn.Module:
    from hpo.models import FAMILIES

    family = FAMILIES.get("mlp")()
    torch.manual_seed(seed)
    dropout = 0.1 + 0.4 * (seed % 7) / 7
    return family.build(family.Params(**{**REFERENCE_MODEL, "dropout": dropout}), (100,), 10)


def _run_with_metrics(client: Any, experiment_id: str) -> tuple[str, list[list[Any]]]:
    """A run holding the reference trial's metrics; the rows at its last step."""
    from mlflow.entities import Metric

    run_id = client.create_run(experiment_id).info.run_id
    now = int(time.time() * 1000)
    points = [
        Metric(key, 0.5, now, epoch)
        for epoch in range(1, REFERENCE_EPOCHS + 1)
        for key in EPOCH_KEYS
    ] + [Metric(key, 0.5, now, REFERENCE_EPOCHS) for key in FINAL_KEYS]
    client.log_batch(run_id, metrics=points)
    rows = [[m.key, m.value, m.step, m.timestamp] for m in points if m.step == REFERENCE_EPOCHS]
    return run_id, rows


def _mlflow_side(client: Any, experiment_id: str, model: torch.nn.Module, x: np.ndarray) -> float:
    import mlflow.pytorch
    from mlflow.models import infer_signature

    from hpo.tracking.models import global_tracking_uri, pip_requirements

    run_id, _ = _run_with_metrics(client, experiment_id)
    started = time.perf_counter()
    model.eval()
    with torch.no_grad():
        signature = infer_signature(x, model(torch.from_numpy(x)).numpy())
    model_id = client.create_logged_model(experiment_id=experiment_id, source_run_id=run_id)
    with global_tracking_uri(client.tracking_uri):
        mlflow.pytorch.log_model(
            model,
            name="model",
            model_id=model_id.model_id,
            run_id=run_id,
            step=REFERENCE_EPOCHS,
            input_example=x,
            signature=signature,
            pip_requirements=pip_requirements(),
            serialization_format="pt2",
            validate_serving_input=False,
        )
    return time.perf_counter() - started


def _hpo_side(client: Any, experiment_id: str, model: torch.nn.Module, x: np.ndarray) -> float:
    from hpo.tracking.models import log_pytorch_model

    run_id, rows = _run_with_metrics(client, experiment_id)
    started = time.perf_counter()
    log_pytorch_model(
        client,
        model,
        x,
        experiment_id=experiment_id,
        run_id=run_id,
        step=REFERENCE_EPOCHS,
        step_metrics=rows,
    )
    return time.perf_counter() - started


def measure(quick: bool) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from hpo.tracking import pt2_cache

    torch.set_num_threads(1)
    models = 8 if quick else 20
    x = np.random.default_rng(0).normal(size=(5, 100)).astype(np.float32)
    seconds: dict[str, list[float]] = {"mlflow": [], "hpo": []}
    sides = {"mlflow": _mlflow_side, "hpo": _hpo_side}
    pt2_cache.CACHE.clear()
    with temp_dir("hpo-bench-model-") as tmp:
        client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
        experiment_id = client.create_experiment("models", artifact_location=str(tmp / "art"))
        for side in sides.values():  # warm-up: imports, the first trace
            side(client, experiment_id, _model(0), x)
        before = load()
        for i in range(1, models + 1):
            for name, side in sides.items():
                seconds[name].append(side(client, experiment_id, _model(i), x))
        after = load()
    hits, misses = pt2_cache.CACHE.hits, pt2_cache.CACHE.misses
    ratio = median(seconds["mlflow"]) / median(seconds["hpo"])
    return {
        "model_logging_speedup": {
            "value": round(ratio, 2),
            "command": COMMAND,
            "note": "seconds per pt2 model: mlflow.pytorch.log_model / hpo's log_pytorch_model "
            "(trace reused, step metrics passed in); medians, interleaved, 1 torch thread",
            "raw": {
                "mlflow_seconds": [round(s, 4) for s in seconds["mlflow"]],
                "hpo_seconds": [round(s, 4) for s in seconds["hpo"]],
                "mlflow_median_seconds": round(median(seconds["mlflow"]), 4),
                "hpo_median_seconds": round(median(seconds["hpo"]), 4),
                "trace_cache_hits_misses": [hits, misses],
                "load_before_after": [before, after],
            },
        }
    }

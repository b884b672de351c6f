"""``loop_throughput_ratio``: samples/s of hpo's :func:`hpo.training.loop.train` / a minimal raw
torch loop, same model (the reference MLP), same data, same seed, interleaved in one process.

The raw loop is what a careful user writes by hand: shuffle per epoch, slice mini-batches from
in-memory tensors, forward / cross-entropy / backward / step, and (in the ``raw_eval`` variant)
the validation loss and accuracy once per epoch, which hpo's loop also computes. The ratio is
taken against ``raw_eval`` (the same work); the ratio against the loop without evaluation is kept
in the raw figures. Both run with 1 torch thread (other processes share the 2 cores).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import (
    REFERENCE_EPOCHS,
    REFERENCE_MODEL,
    REFERENCE_TRAIN,
    interleave,
    load,
    median,
    result,
    rounded,
)

COMMAND = ".venv/bin/python -m benchmarks.run --only loop_throughput_ratio"


def reference_data() -> Any:
    """The reference data set (random 1,000 × 100, 10 classes, 25 % validation) via hpo."""
    from hpo.data import load_dataset_cached
    from hpo.data.base import SplitOptions

    options = {"kind": "random", "n_samples": 1000, "n_features": 100, "n_classes": 10}
    return load_dataset_cached("synthetic", options, SplitOptions(val_fraction=0.25, seed=0))


def reference_model(data: Any) -> torch.nn.Module:
    from hpo.models import FAMILIES

    family = FAMILIES.get("mlp")
    return family().build(family.Params(**REFERENCE_MODEL), data.input_shape, data.n_classes)


def raw_train(
    data: Any,
    *,
    evaluate: bool,
    fused: bool = True,
    epochs: int = REFERENCE_EPOCHS,
    seed: int = 0,
) -> float:
    """A minimal hand-written torch loop on the reference model; returns its wall seconds.

    ``fused``: Adam's fused step, as hpo builds it (:mod:`hpo.training.optim`), so that the
    comparison is of the loops and not of the optimizer's kernels; False is torch's default
    step on the CPU (a Python loop over the parameters).
    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = reference_model(data)
    X = torch.from_numpy(np.ascontiguousarray(data.X_train, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(data.y_train, dtype=np.int64))
    X_val = torch.from_numpy(np.ascontiguousarray(data.X_val, dtype=np.float32))
    y_val = torch.from_numpy(np.ascontiguousarray(data.y_val, dtype=np.int64))
    optimizer = torch.optim.Adam(
        model.parameters(), lr=REFERENCE_TRAIN["lr"], fused=True if fused else None
    )
    batch = int(REFERENCE_TRAIN["batch_size"])
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(y), generator=generator)
        for idx in perm.split(batch):
            loss = F.cross_entropy(model(X[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if evaluate:
            model.eval()
            with torch.no_grad():
                logits = model(X_val)
                _ = (
                    float(F.cross_entropy(logits, y_val)),
                    float((logits.argmax(1) == y_val).float().mean()),
                )
    return time.perf_counter() - started


def hpo_train(data: Any, epochs: int = REFERENCE_EPOCHS, seed: int = 0) -> float:
    """hpo's training loop (no callbacks) on the same model; returns its wall seconds."""
    from hpo.training.config import TrainParams
    from hpo.training.loop import seed_everything, train

    started = time.perf_counter()
    seed_everything(seed)
    model = reference_model(data)
    train(
        model,
        data,
        TrainParams(**REFERENCE_TRAIN),
        epochs=epochs,
        device=torch.device("cpu"),
        seed=seed,
    )
    return time.perf_counter() - started


def measure(quick: bool) -> dict[str, Any]:
    torch.set_num_threads(1)
    data = reference_data()
    samples = len(data.y_train) * REFERENCE_EPOCHS
    # Warm-up: first calls pay for lazy initialisation in torch.
    raw_train(data, evaluate=True)
    hpo_train(data)
    before = load()
    figures = interleave(
        5 if quick else 15,
        {
            "raw": lambda: raw_train(data, evaluate=False),
            "raw_eval": lambda: raw_train(data, evaluate=True),
            "raw_eval_default_step": lambda: raw_train(data, evaluate=True, fused=False),
            "hpo": lambda: hpo_train(data),
        },
    )
    rate = {k: samples / median(v) for k, v in figures.items()}
    raw = {
        "samples_per_run": samples,
        "seconds": figures,
        "median_seconds": {k: median(v) for k, v in figures.items()},
        "samples_per_second": rate,
        "ratio_vs_raw_without_eval": rate["hpo"] / rate["raw"],
        "ratio_vs_raw_with_torchs_default_step": rate["hpo"] / rate["raw_eval_default_step"],
        "torch_threads": 1,
        "load_before_after": [before, load()],
    }
    return {
        "loop_throughput_ratio": result(
            rate["hpo"] / rate["raw_eval"],
            ">= 0.95",
            COMMAND,
            raw,
            note="hpo train() vs a minimal raw torch loop with per-epoch validation and the "
            "same (fused) Adam step; median of interleaved repeats, 1 torch thread",
        ),
        "fused_step_speedup": {
            "value": round(rate["raw_eval"] / rate["raw_eval_default_step"], 3),
            "command": COMMAND,
            "note": "samples/s of the raw loop with Adam's fused step (as hpo builds it) / the "
            "same loop with torch's default step on the CPU; the same interleaved repeats",
            "raw": {"median_seconds": rounded(raw["median_seconds"])},
        },
    }

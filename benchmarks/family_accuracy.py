"""Each model family with its shipped defaults on digits: accuracy, size, speed.

    .venv/bin/python benchmarks/family_accuracy.py [--epochs 15] [--seeds 1] [--json out.json]

Trains every registered family with its default hyperparameters (Adam, lr 1e-3, batch 64) on
scikit-learn's digits, as 8x8 images for convolutional families and flat for the MLP, and prints
final validation accuracy, parameter count, training time and samples/s. With CUDA available, each
family also runs on the GPU in the same process, and the GPU/CPU throughput ratio is printed side by
side (absolute times drift on shared machines; ratios measured in one run hold).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from hpo.data import load_dataset
from hpo.data.base import SplitOptions
from hpo.models import FAMILIES
from hpo.models.base import count_parameters
from hpo.training.config import TrainParams
from hpo.training.loop import seed_everything, train


def run(family: str, device: torch.device, epochs: int, seed: int) -> dict[str, float]:
    cls = FAMILIES.get(family)
    images = getattr(cls, "input_kind", "flat") == "image"
    data = load_dataset("sklearn", {"name": "digits", "images": images}, SplitOptions(seed=0))
    seed_everything(seed)
    model = cls().build(cls.Params(), data.input_shape, data.n_classes)
    result = train(
        model, data, TrainParams(batch_size=64, lr=1e-3), epochs=epochs, device=device, seed=seed
    )
    return {
        "val_accuracy": result.history[-1]["val_accuracy"],
        "n_params": float(count_parameters(model)),
        "train_seconds": result.train_seconds,
        "samples_per_second": result.samples_per_second,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results: dict[str, dict[str, dict[str, float]]] = {}
    header = (
        f"{'family':8} {'device':6} {'val_acc':>8} {'params':>9} {'seconds':>8} {'samples/s':>10}"
    )
    print(
        f"digits, shipped defaults, {args.epochs} epochs, {args.seeds} seed(s), torch {torch.__version__}"
    )
    print(header)
    for family in FAMILIES.names():
        for device in devices:
            runs = [run(family, device, args.epochs, seed) for seed in range(args.seeds)]
            summary = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            summary["min_val_accuracy"] = min(r["val_accuracy"] for r in runs)
            results.setdefault(family, {})[device.type] = summary
            print(
                f"{family:8} {device.type:6} {summary['val_accuracy']:8.4f} {int(summary['n_params']):9,d} "
                f"{summary['train_seconds']:8.2f} {summary['samples_per_second']:10.0f}"
            )
        if "cuda" in results[family]:
            ratio = (
                results[family]["cuda"]["samples_per_second"]
                / results[family]["cpu"]["samples_per_second"]
            )
            results[family]["gpu_cpu_throughput_ratio"] = {"value": ratio}
            print(f"{family:8} GPU/CPU samples/s ratio: {ratio:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

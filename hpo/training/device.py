"""Resolve the study file's ``train.device`` to a :class:`torch.device`, failing early and clearly.

Also the per-device settings of the training loop: bf16 autocast and channels-last memory format,
on CUDA only (on the CPU they cost time and change results), and cuDNN's kernel choice, which is
deterministic by default so a seeded CUDA run repeats (``HPO_CUDNN_BENCHMARK=1`` trades that for
autotuning speed).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

import torch
from torch import nn

from hpo.errors import DeviceError

_FIELD = "train.device"
_ACCEPTED = "auto, cpu, cuda, cuda:N or mps"
#: Set to 1 (or true, yes, on) to let cuDNN autotune convolutions: faster, not bit-repeatable.
BENCHMARK_ENV = "HPO_CUDNN_BENCHMARK"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """Map ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` / ``mps`` to a device that exists here.

    ``auto`` picks CUDA, then MPS, then the CPU. Asking explicitly for a device this machine lacks
    raises :class:`~hpo.errors.DeviceError` rather than silently training somewhere else.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"{_FIELD}: invalid device '{name}'; use {_ACCEPTED}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"{_FIELD}: '{name}' is not available (this torch {torch.__version__} sees no CUDA "
                "GPU); use 'auto' or 'cpu'"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"{_FIELD}: '{name}' is not available (this machine has {count} CUDA device(s): "
                f"cuda:0 … cuda:{count - 1})"
            )
        return device
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(f"{_FIELD}: '{name}' is not available (no Apple MPS backend here)")
        return device
    raise DeviceError(f"{_FIELD}: unsupported device '{name}'; use {_ACCEPTED}")


def bf16_autocast_supported(device: torch.device) -> bool:
    """Whether ``device`` is a CUDA GPU with native bfloat16 (Ampere or newer, or ROCm).

    Emulated bf16 (older GPUs) is excluded: it is slower than float32 there.
    """
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def mixed_precision(device: torch.device) -> Callable[[], AbstractContextManager[Any]]:
    """A factory of contexts for forward passes and losses on ``device``, checked once.

    bf16 autocast on a bf16-capable GPU, a no-op elsewhere (the CPU included). bf16 keeps
    float32's exponent range, so unlike float16 it needs no gradient scaler; ``cross_entropy``
    still returns float32 (autocast runs it in float32).
    """
    if bf16_autocast_supported(device):
        return partial(torch.autocast, device_type="cuda", dtype=torch.bfloat16)
    return nullcontext


def use_channels_last(device: torch.device, model: nn.Module, input_ndim: int) -> bool:
    """Whether to train ``model`` and its ``(N, C, H, W)`` inputs in channels-last memory format.

    Only on CUDA and only for convolutional models on 4-D input: there cuDNN's NHWC kernels use
    the tensor cores without a layout transform per convolution; on the CPU the format costs time.
    """
    return (
        device.type == "cuda"
        and input_ndim == 4
        and any(isinstance(module, nn.Conv2d) for module in model.modules())
    )


def cudnn_benchmark_requested() -> bool:
    """Whether ``$HPO_CUDNN_BENCHMARK`` asks for cuDNN autotuning (1, true, yes or on)."""
    return os.environ.get(BENCHMARK_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def configure_backends(device: torch.device, *, benchmark: bool | None = None) -> None:
    """Per-device global switches; on CUDA, how cuDNN picks its convolution kernels.

    By default (``benchmark`` False) cuDNN uses deterministic kernels and no autotuning: with
    autotuning, each run times the candidate kernels and may pick a different one (some of them
    non-deterministic), so two runs of one seeded trial differ in the last bits and then more.
    ``benchmark=True`` (default: :func:`cudnn_benchmark_requested`) turns autotuning on instead:
    input shapes are fixed within a run, so its one-off cost is repaid from the second epoch on.

    Only cuDNN's switches are set: ``torch.use_deterministic_algorithms`` would also need
    ``CUBLAS_WORKSPACE_CONFIG`` set before CUDA starts, and raises on the few ops without a
    deterministic kernel, so it is left to the user. The CPU is left alone (its kernels are
    deterministic already).
    """
    if device.type != "cuda":
        return
    if benchmark is None:
        benchmark = cudnn_benchmark_requested()
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.deterministic = not benchmark

"""Resolve the study file's ``train.device`` to a :class:`torch.device`, failing early and clearly."""

from __future__ import annotations

import torch

from hpo.errors import DeviceError

_FIELD = "train.device"
_ACCEPTED = "auto, cpu, cuda, cuda:N or mps"


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

"""resolve_device: the CPU always resolves; a missing accelerator is a clear DeviceError."""

from __future__ import annotations

import pytest
import torch

from hpo.errors import DeviceError
from hpo.training.device import resolve_device


def test_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_returns_a_usable_device() -> None:
    device = resolve_device("auto")
    assert device.type in {"cpu", "cuda", "mps"}
    if torch.cuda.is_available():
        assert device.type == "cuda"
    torch.zeros(1, device=device)


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_missing_cuda_names_the_field(name: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(DeviceError, match=rf"train\.device: '{name}' is not available"):
        resolve_device(name)


def test_cuda_index_beyond_the_devices() -> None:
    with pytest.raises(DeviceError, match=r"train\.device: 'cuda:99'"):
        resolve_device("cuda:99")


def test_missing_mps() -> None:
    if torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    with pytest.raises(DeviceError, match=r"train\.device: 'mps' is not available"):
        resolve_device("mps")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "meta"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(DeviceError, match=r"train\.device: (invalid|unsupported) device"):
        resolve_device(name)

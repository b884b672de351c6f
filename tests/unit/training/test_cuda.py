"""Device-dependent parts of the training loop: bf16 autocast, channels-last, cuDNN autotuning and
the per-batch augmentation hook.

The CPU tests run everywhere and pin down that none of the CUDA speed-ups touch CPU training. The
tests marked ``gpu`` need CUDA (``pytest -m gpu`` on a GPU machine) and are skipped elsewhere.
"""

from __future__ import annotations

import math
import os
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpo.data.augment import Augmentation
from hpo.data.base import Dataset
from hpo.models import get_family
from hpo.training.config import TrainParams
from hpo.training.device import (
    bf16_autocast_supported,
    configure_backends,
    mixed_precision,
    use_channels_last,
)
from hpo.training.loop import predict_proba, seed_everything, train

CPU = torch.device("cpu")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
#: Tiny versions of each family for 1×8×8 input.
TINY = {
    "mlp": {"width": 16},
    "cnn": {"width": 4, "depth": 2},
    "vgg": {"width": 4},
    "resnet": {"width": 4},
}


def bright_vs_dark(n: int = 400, seed: int = 0) -> Dataset:
    """1×8×8 noise images, class 1 a little brighter than class 0."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n).astype(np.int64)
    shift = np.where(y == 1, 0.5, -0.5).astype(np.float32).reshape(-1, 1, 1, 1)
    X = rng.normal(size=(n, 1, 8, 8)).astype(np.float32) + shift
    cut = n * 3 // 4
    return Dataset("bright", X[:cut], y[:cut], X[cut:], y[cut:], ["dark", "bright"])


def with_augmentation(data: Dataset, augmentation: Augmentation) -> Dataset:
    return replace(data, augmentation=augmentation)


def build(family: str, data: Dataset, seed: int = 0) -> nn.Module:
    seed_everything(seed)
    fam = get_family(family)
    return fam.build(fam.Params(**TINY[family]), data.input_shape, data.n_classes)


def spatial_convs(model: nn.Module) -> list[nn.Conv2d]:
    """Convolutions whose weight layout tells NCHW from channels-last (C > 1 and a k×k kernel)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.in_channels > 1 and m.kernel_size != (1, 1)
    ]


@dataclass(frozen=True)
class RecordingAugmentation(Augmentation):
    """The real random crop and flip, recording the batch and generator of every call."""

    crop_padding: int = 1
    hflip: bool = True
    calls: list[tuple[tuple[int, ...], torch.device, torch.Generator]] = field(default_factory=list)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        self.calls.append((tuple(x.shape), x.device, generator))
        return super().__call__(x, generator)


@dataclass(frozen=True)
class Blank(Augmentation):
    """Replaces every batch with zeros, so it shows what the model is fed."""

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.zeros_like(x)


# --- CPU: the CUDA speed-ups are off ----------------------------------------------------------


def test_no_mixed_precision_or_channels_last_on_the_cpu() -> None:
    assert not bf16_autocast_supported(CPU)
    assert mixed_precision(CPU) is nullcontext
    data = bright_vs_dark()
    model = build("cnn", data)
    with mixed_precision(CPU)():
        assert model(torch.randn(2, 1, 8, 8)).dtype == torch.float32
    assert not use_channels_last(CPU, model, 4)
    train(model, data, TrainParams(), epochs=1, device=CPU, seed=0)
    convs = spatial_convs(model)
    assert convs and all(c.weight.is_contiguous() for c in convs)  # still the default NCHW


def test_channels_last_only_for_conv_models_on_4d_input_on_cuda() -> None:
    cuda = torch.device("cuda")  # a device object needs no GPU; the check is by type
    data = bright_vs_dark()
    cnn, mlp = build("cnn", data), build("mlp", data)
    assert use_channels_last(cuda, cnn, 4)
    assert not use_channels_last(cuda, mlp, 4)
    assert not use_channels_last(cuda, cnn, 2)
    assert not use_channels_last(torch.device("mps"), cnn, 4)


@pytest.fixture
def cudnn_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restore cuDNN's global switches after the test; no $HPO_CUDNN_BENCHMARK during it."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", torch.backends.cudnn.deterministic)
    monkeypatch.delenv("HPO_CUDNN_BENCHMARK", raising=False)


@pytest.mark.usefixtures("cudnn_flags")
@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_cudnn_switches_are_left_alone_off_cuda(device: str) -> None:
    for benchmark, deterministic in ((True, False), (False, True)):
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = deterministic
        configure_backends(torch.device(device))
        configure_backends(torch.device(device), benchmark=not benchmark)
        assert torch.backends.cudnn.benchmark is benchmark
        assert torch.backends.cudnn.deterministic is deterministic


@pytest.mark.usefixtures("cudnn_flags")
def test_cuda_runs_use_deterministic_cudnn_kernels_by_default() -> None:
    # The switches are plain flags: setting them needs no GPU, only a CUDA device object.
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = False
    configure_backends(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is False
    assert torch.backends.cudnn.deterministic is True
    configure_backends(torch.device("cuda:1"))
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (False, True)


@pytest.mark.usefixtures("cudnn_flags")
@pytest.mark.parametrize(
    ("value", "autotune"),
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("", False),
     ("false", False)],
)  # fmt: skip
def test_hpo_cudnn_benchmark_opts_into_autotuning(
    value: str, autotune: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPO_CUDNN_BENCHMARK", value)
    configure_backends(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is autotune
    assert torch.backends.cudnn.deterministic is not autotune


@pytest.mark.usefixtures("cudnn_flags")
def test_an_explicit_choice_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_CUDNN_BENCHMARK", "1")
    configure_backends(torch.device("cuda"), benchmark=False)
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (False, True)
    monkeypatch.delenv("HPO_CUDNN_BENCHMARK")
    configure_backends(torch.device("cuda"), benchmark=True)
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (True, False)


@pytest.mark.usefixtures("cudnn_flags")
def test_training_on_the_cpu_leaves_cudnn_alone() -> None:
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = False
    data = bright_vs_dark()
    train(build("mlp", data), data, TrainParams(), epochs=1, device=CPU, seed=0)
    assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (True, False)


# --- CPU: the augmentation hook -----------------------------------------------------------------


def test_augmentation_sees_every_training_batch_with_one_seeded_generator() -> None:
    data = bright_vs_dark()  # 300 training rows: batches of 64 × 4 and 44
    augmentation = RecordingAugmentation()
    train(
        build("cnn", data),
        with_augmentation(data, augmentation),
        TrainParams(batch_size=64),
        epochs=2,
        device=CPU,
        seed=0,
    )
    # Two epochs, then the BatchNorm pass over whole batches (hpo.training.batchnorm): the
    # layers' statistics come from augmented batches, as in training.
    assert [shape for shape, _, _ in augmentation.calls] == 2 * (
        4 * [(64, 1, 8, 8)] + [(44, 1, 8, 8)]
    ) + 4 * [(64, 1, 8, 8)]
    assert {device.type for _, device, _ in augmentation.calls} == {"cpu"}
    generators = {id(generator) for _, _, generator in augmentation.calls}
    assert len(generators) == 1  # created once per train() call
    assert augmentation.calls[0][2].device.type == "cpu"


def test_augmentation_also_applies_to_full_batch_training() -> None:
    data = bright_vs_dark()
    augmentation = RecordingAugmentation()
    train(
        build("mlp", data),
        with_augmentation(data, augmentation),
        TrainParams(batch_size="full"),
        epochs=3,
        device=CPU,
        seed=0,
    )
    assert [shape for shape, _, _ in augmentation.calls] == 3 * [(300, 1, 8, 8)]


def test_augmentation_is_reproducible_from_the_seed_and_changes_training() -> None:
    data = bright_vs_dark()

    def run(seed: int, augmented: bool) -> list[dict[str, float]]:
        used = with_augmentation(data, RecordingAugmentation()) if augmented else data
        model = build("cnn", data, seed=0)  # same initial weights every time
        return train(model, used, TrainParams(), epochs=2, device=CPU, seed=seed).history

    assert run(0, True) == run(0, True)
    assert run(0, True) != run(0, False)
    # Different seeds give different augmentation draws (and batch orders).
    assert run(0, True) != run(1, True)


def test_the_model_trains_on_the_augmented_batch_and_validates_on_raw_data() -> None:
    data = bright_vs_dark()
    seen: list[float] = []

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(float(x.abs().max()) if self.training else -1.0)
            return self.fc(x.flatten(1))

    train(Recorder(), with_augmentation(data, Blank()), TrainParams(), epochs=1, device=CPU, seed=0)
    training, validation = seen[:-1], seen[-1:]
    assert training == [0.0] * 5
    assert validation == [-1.0]


# --- CUDA ---------------------------------------------------------------------------------------


@pytest.fixture
def cuda() -> torch.device:
    return torch.device("cuda")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("family", list(TINY))
def test_each_family_trains_an_epoch_on_cuda(family: str, cuda: torch.device) -> None:
    data = bright_vs_dark()
    model = build(family, data)
    result = train(model, data, TrainParams(), epochs=1, device=cuda, seed=0)
    epoch = result.history[0]
    assert all(math.isfinite(epoch[key]) for key in ("train_loss", "val_loss"))
    assert 0.0 <= epoch["val_accuracy"] <= 1.0
    if not os.environ.get("HPO_CUDNN_BENCHMARK"):
        assert torch.backends.cudnn.benchmark is False
        assert torch.backends.cudnn.deterministic is True
    assert next(model.parameters()).device.type == "cuda"
    # Conv families train in channels-last layout; the MLP has no convolutions to convert.
    convs = spatial_convs(model)
    assert bool(convs) == (family != "mlp")
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not any(c.weight.is_contiguous() for c in convs)

    proba = predict_proba(model, data.X_val, cuda)
    # predict_proba's contract on every device: float64 (softmax in float64 on the CPU), rows of 1.
    assert proba.dtype == np.float64
    assert proba.shape == (len(data.y_val), data.n_classes)
    assert np.isfinite(proba).all()
    assert np.allclose(proba.sum(axis=1), 1.0)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.usefixtures("cudnn_flags")
@pytest.mark.parametrize("family", list(TINY))
def test_a_seeded_cuda_run_repeats_bit_for_bit(family: str, cuda: torch.device) -> None:
    # What the README claims for CUDA with the default (deterministic) cuDNN switches.
    data = bright_vs_dark()
    runs = []
    for _ in range(2):
        model = build(family, data)
        result = train(model, data, TrainParams(), epochs=2, device=cuda, seed=0)
        runs.append((result.history, {k: v.cpu() for k, v in model.state_dict().items()}))
    (history_a, state_a), (history_b, state_b) = runs
    assert history_a == history_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.gpu
@requires_cuda
def test_bf16_autocast_on_cuda(cuda: torch.device) -> None:
    data = bright_vs_dark()
    model = build("cnn", data).to(cuda)
    x = torch.randn(8, 1, 8, 8, device=cuda)
    y = torch.randint(0, 2, (8,), device=cuda)
    with mixed_precision(cuda)():
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    expected = torch.bfloat16 if bf16_autocast_supported(cuda) else torch.float32
    assert logits.dtype == expected
    assert loss.dtype == torch.float32  # autocast computes losses in float32


@pytest.mark.gpu
@requires_cuda
def test_a_cnn_learns_on_cuda(cuda: torch.device) -> None:
    data = bright_vs_dark()
    model = build("cnn", data)
    result = train(model, data, TrainParams(lr=1e-2), epochs=5, device=cuda, seed=0)
    assert result.history[-1]["val_accuracy"] > 0.9


@pytest.mark.gpu
@requires_cuda
def test_augmentation_runs_on_the_gpu_with_a_gpu_generator(cuda: torch.device) -> None:
    data = bright_vs_dark()
    augmentation = RecordingAugmentation()
    result = train(
        build("resnet", data),
        with_augmentation(data, augmentation),
        TrainParams(),
        epochs=1,
        device=cuda,
        seed=0,
    )
    assert math.isfinite(result.history[0]["train_loss"])
    assert augmentation.calls
    assert {device.type for _, device, _ in augmentation.calls} == {"cuda"}
    assert {generator.device.type for _, _, generator in augmentation.calls} == {"cuda"}

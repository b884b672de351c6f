"""The training loop: plain PyTorch over in-memory tensors, no Optuna or MLflow.

Design notes (throughput is benchmarked against a minimal hand-written torch loop):

* The data is moved to the device once; there is no ``DataLoader`` (its per-batch collation costs
  about 20 % on small models). Each epoch shuffles with a seeded :class:`torch.Generator` and
  slices mini-batches as views of the shuffled tensors.
* Per-batch loss and predictions stay on the device and are reduced once per epoch, so the loop
  never forces a host/GPU sync per batch (no ``.item()`` in the inner loop).
* Divergence (a NaN or infinite loss) is detected at the first batch and at each epoch end.
* On CUDA only (see :mod:`hpo.training.device`): bf16 autocast for forward passes and losses,
  channels-last memory format for conv models on image input, deterministic cuDNN kernels (or
  autotuning with ``HPO_CUDNN_BENCHMARK=1``). CPU runs are untouched by all three, so they stay
  bit-for-bit reproducible.
* A data set's ``augmentation`` (if any) transforms each training mini-batch on the device, with
  a device generator seeded from ``seed``.

Pruning and tracking hook in as :class:`~hpo.training.callbacks.Callback` objects; an exception
raised by a callback stops training and propagates unchanged.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hpo.data.base import Dataset
from hpo.training.batchnorm import recompute_batchnorm
from hpo.training.callbacks import Callback
from hpo.training.config import TrainParams
from hpo.training.device import configure_backends, mixed_precision, use_channels_last
from hpo.training.optim import make_optimizer

#: Rows per forward pass when evaluating (bounds memory; no gradients are kept).
EVAL_BATCH_SIZE = 4096
#: Above this size the training set is not copied in shuffled order each epoch; each batch is
#: gathered on its own instead (a little slower, but needs no second copy of the data).
_SHUFFLED_COPY_LIMIT_BYTES = 1 << 30
#: Mixed into ``seed`` for the augmentation generator, so that on the CPU (where both generators
#: are the same Mersenne twister) augmentation draws do not replay the batch-order draws.
_AUGMENTATION_SEED_OFFSET = 0x5EED_A06
#: Mixed into ``seed`` for the batch order of the BatchNorm pass after the last epoch.
_BATCHNORM_SEED_OFFSET = 0xB4_7C4


class TrainingDiverged(Exception):
    """The loss became NaN or infinite: the hyperparameters (usually the learning rate) diverge."""

    def __init__(self, epoch: int, loss: float) -> None:
        # Keep the constructor arguments as ``args`` so the exception pickles across processes.
        super().__init__(epoch, loss)
        self.epoch = epoch
        self.loss = loss

    def __str__(self) -> str:
        return f"loss became {self.loss} at epoch {self.epoch} (learning rate too high?)"


@dataclass
class TrainResult:
    """What :func:`train` measured."""

    #: One dict per epoch: ``epoch``, ``train_loss``, ``train_accuracy``, ``val_loss``,
    #: ``val_accuracy``.
    history: list[dict[str, float]] = field(default_factory=list)
    #: Wall-clock time of :func:`train`, excluding the time spent inside callbacks.
    train_seconds: float = 0.0
    epochs_run: int = 0
    #: Training samples processed (all epochs) per second of ``train_seconds``.
    samples_per_second: float = 0.0
    #: One row per epoch: how many validation samples the model assigned to each class
    #: (``n_classes`` counts of the argmax, summing to the validation size; empty without a
    #: validation split). Shows a model collapsing onto few classes, or spreading out, as it trains.
    val_prediction_counts: list[list[int]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators.

    Call it before building the model: weight initialisation and dropout masks draw from torch's
    global generator, so a trial is then reproducible (bit for bit on the CPU).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _as_tensor(array: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    contiguous = np.ascontiguousarray(array)
    if not contiguous.flags.writeable:
        # torch warns about (and could write through) read-only NumPy memory.
        contiguous = contiguous.copy()
    return torch.from_numpy(contiguous).to(device=device, dtype=dtype)


def _evaluate(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    precision: Callable[[], AbstractContextManager[Any]],
    n_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed cross-entropy, number of correct predictions and predictions per class (a
    ``n_classes`` vector), as device tensors (no sync).

    Runs under the same ``precision`` context as training, so the validation loss measures the
    numerics the model was trained with.
    """
    model.eval()
    loss_sum = torch.zeros((), device=X.device)
    correct = torch.zeros((), dtype=torch.long, device=X.device)
    counts = torch.zeros(n_classes, dtype=torch.long, device=X.device)
    with torch.no_grad(), precision():
        for xb, yb in zip(X.split(EVAL_BATCH_SIZE), y.split(EVAL_BATCH_SIZE), strict=True):
            logits = model(xb)
            predicted = logits.argmax(dim=1)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum")
            correct += (predicted == yb).sum()
            # The distribution of predicted classes per epoch costs one bincount here.
            counts += torch.bincount(predicted, minlength=n_classes)[:n_classes]
    return loss_sum, correct, counts


def _batch_augmenter(
    data: Dataset, device: torch.device, seed: int
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``data.augmentation`` bound to a generator on ``device`` seeded from ``seed``; or ``None``.

    One generator per :func:`train` call: its draws continue across batches and epochs, and a run
    is reproducible from ``seed``. It lives on the training device so batches never leave it.
    """
    augmentation = data.augmentation
    if augmentation is None:
        return None
    # Modulo 2**64: manual_seed takes unsigned 64-bit seeds.
    generator = torch.Generator(device=device).manual_seed(
        (seed + _AUGMENTATION_SEED_OFFSET) % 2**64
    )

    def augment(batch: torch.Tensor) -> torch.Tensor:
        return augmentation(batch, generator)

    return augment


def train(
    model: nn.Module,
    data: Dataset,
    params: TrainParams,
    *,
    epochs: int,
    device: torch.device,
    seed: int,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``model`` (moved to ``device``) on ``data.X_train`` for ``epochs`` epochs.

    Each epoch: a permutation seeded from ``seed``, mini-batches of ``params.batch_size``,
    cross-entropy and one optimizer step per batch; then the epoch's running-mean training
    loss/accuracy and the validation loss/accuracy (eval mode) go to every callback.

    A final batch of a single sample is dropped (BatchNorm cannot train on one sample).
    After the last epoch's steps, BatchNorm statistics are recomputed over the training data for
    the final weights (:func:`~hpo.training.batchnorm.recompute_batchnorm`) before that epoch's
    validation: the returned model is evaluated as trained, not with moving averages of the
    last batches. The model is left in eval mode. Raises :class:`TrainingDiverged` on a NaN or
    infinite loss.

    If ``data.augmentation`` is set, every training batch goes through it on the device before the
    forward pass (with a generator on ``device`` seeded from ``seed``); validation data never does.
    On CUDA the forward passes run under bf16 autocast (where the GPU has native bf16) and conv
    models see channels-last input; the model is left in channels-last format then.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    started = time.perf_counter()
    callback_seconds = 0.0

    configure_backends(device)
    model.to(device)
    X = _as_tensor(data.X_train, torch.float32, device)
    y = _as_tensor(data.y_train, torch.long, device)
    X_val = _as_tensor(data.X_val, torch.float32, device)
    y_val = _as_tensor(data.y_val, torch.long, device)
    channels_last = use_channels_last(device, model, X.dim())
    if channels_last:
        # Module.to accepts memory_format at runtime; torch's overload stubs omit it.
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        X = X.contiguous(memory_format=torch.channels_last)
        X_val = X_val.contiguous(memory_format=torch.channels_last)

    precision = mixed_precision(device)
    augment = _batch_augmenter(data, device, seed)
    n = len(y)
    if n == 0:
        raise ValueError("the training split is empty")
    n_val = len(y_val)

    batch_size = params.resolved_batch_size(n)
    n_used = n - 1 if n > 1 and n % batch_size == 1 else n
    full_batch = batch_size >= n_used
    shuffled_copy = X.element_size() * X.numel() <= _SHUFFLED_COPY_LIMIT_BYTES
    # Batch sizes are the same every epoch: weights that turn per-batch mean losses into a sum.
    sizes = [batch_size] * (n_used // batch_size)
    if n_used % batch_size:
        sizes.append(n_used % batch_size)
    batch_weights = torch.tensor(sizes, dtype=torch.float32, device=device)

    optimizer = make_optimizer(
        params.optimizer,
        model.parameters(),
        lr=params.lr,
        weight_decay=params.weight_decay,
        momentum=params.momentum,
    )
    # A CPU generator gives the same batch order on every device.
    generator = torch.Generator().manual_seed(seed)

    history: list[dict[str, float]] = []
    prediction_counts: list[list[int]] = []
    for epoch in range(1, epochs + 1):
        model.train()
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
        if full_batch:
            # One step over everything: the order cannot matter.
            y_epoch = y[:n_used]
            batches = [(X[:n_used], y_epoch)]
        else:
            perm = torch.randperm(n, generator=generator)[:n_used].to(device)
            y_epoch = y.index_select(0, perm)
            if shuffled_copy:
                # One gather per epoch; batches are then free views of contiguous memory.
                X_epoch = X.index_select(0, perm)
                if channels_last:
                    # The gather may come back in the default format: restore it once per epoch.
                    X_epoch = X_epoch.contiguous(memory_format=torch.channels_last)
                batches = zip(
                    X_epoch.split(batch_size),
                    y_epoch.split(batch_size),
                    strict=True,
                )
            else:
                batches = (
                    (X.index_select(0, idx), y.index_select(0, idx))
                    for idx in perm.split(batch_size)
                )

        losses: list[torch.Tensor] = []
        predictions: list[torch.Tensor] = []
        for xb, yb in batches:
            if augment is not None:
                xb = augment(xb)
            if channels_last:
                # A no-op for batches that already are (views of the channels-last copy).
                xb = xb.contiguous(memory_format=torch.channels_last)
            with precision():
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            predictions.append(logits.detach().argmax(dim=1))
            if epoch == 1 and len(losses) == 1:
                # One sync in the whole run: fail at once if the very first loss is broken
                # (e.g. non-finite inputs) rather than after a full epoch.
                first = float(loss.detach())
                if not math.isfinite(first):
                    raise TrainingDiverged(epoch, first)

        train_loss_sum = torch.dot(torch.stack(losses), batch_weights)
        train_correct = (torch.cat(predictions) == y_epoch).sum()
        # The per-epoch sync: both numbers come back in one transfer.
        train_loss_total, train_correct_total = torch.stack(
            [train_loss_sum, train_correct.to(train_loss_sum.dtype)]
        ).tolist()
        train_loss = train_loss_total / n_used
        if not math.isfinite(train_loss):
            raise TrainingDiverged(epoch, train_loss)

        if epoch == epochs:
            # Evaluate (and return) the final weights with their own BatchNorm statistics, not
            # the moving averages of the last batches' (see hpo.training.batchnorm).
            recompute_batchnorm(
                model,
                X[:n_used] if full_batch else X,
                batch_size,
                generator=torch.Generator().manual_seed(seed + _BATCHNORM_SEED_OFFSET),
                augment=augment,
                precision=precision,
                channels_last=channels_last,
            )

        if n_val:
            val_loss_sum, val_correct, val_counts = _evaluate(
                model, X_val, y_val, precision, data.n_classes
            )
            val_loss_total, val_correct_total = torch.stack(
                [val_loss_sum, val_correct.to(val_loss_sum.dtype)]
            ).tolist()
            # Already computed by the sync above: one more small copy, exact integers.
            prediction_counts.append(val_counts.tolist())
            val_loss, val_accuracy = val_loss_total / n_val, val_correct_total / n_val
            # The last step of the epoch may have broken the weights after its loss was computed.
            if not math.isfinite(val_loss):
                raise TrainingDiverged(epoch, val_loss)
        else:
            val_loss = val_accuracy = math.nan

        metrics = {
            "train_loss": train_loss,
            "train_accuracy": train_correct_total / n_used,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
        }
        history.append({"epoch": epoch, **metrics})
        callbacks_started = time.perf_counter()
        for callback in callbacks:
            callback.on_epoch_end(epoch, dict(metrics))
        callback_seconds += time.perf_counter() - callbacks_started

    model.eval()
    seconds = max(time.perf_counter() - started - callback_seconds, 1e-9)
    return TrainResult(
        history=history,
        train_seconds=seconds,
        epochs_run=len(history),
        samples_per_second=len(history) * n_used / seconds,
        val_prediction_counts=prediction_counts,
    )


def predict_proba(
    model: nn.Module, X: np.ndarray, device: torch.device, batch_size: int = EVAL_BATCH_SIZE
) -> np.ndarray:
    """Class probabilities (softmax of the logits) for ``X``, shape ``(n, n_classes)``, float64.

    Runs in eval mode under ``no_grad``; the model's previous train/eval mode is restored.
    """
    was_training = model.training
    model.to(device)
    model.eval()
    chunks: list[np.ndarray] = []
    try:
        with torch.no_grad():
            inputs = _as_tensor(X, torch.float32, torch.device("cpu"))
            for xb in inputs.split(batch_size):
                logits = model(xb.to(device)).cpu()
                # float64 softmax (on the CPU: MPS has no float64): rows then sum to 1 tightly
                # enough for scikit-learn's probability checks.
                chunks.append(torch.softmax(logits.double(), dim=1).numpy())
    finally:
        model.train(was_training)
    if not chunks:
        return np.zeros((0, 0), dtype=np.float64)
    return np.concatenate(chunks)

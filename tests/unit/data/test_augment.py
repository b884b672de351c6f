"""Augmentation of training batches: vectorised random crop and flip, seeded by a generator."""

from __future__ import annotations

import pytest
import torch

from hpo.data.augment import Augmentation, AugmentOptions, augmentation_from
from hpo.errors import DataError


def batch(n: int = 16, c: int = 3, h: int = 6, w: int = 5) -> torch.Tensor:
    # Distinct, non-zero values everywhere, so a zero can only come from the padding.
    return torch.arange(1, n * c * h * w + 1, dtype=torch.float32).reshape(n, c, h, w)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_off_is_a_no_op() -> None:
    x = batch()
    aug = Augmentation()
    assert not aug.active
    assert aug(x, gen()) is x


@pytest.mark.parametrize("aug", [Augmentation(hflip=True), Augmentation(2), Augmentation(1, True)])
def test_shape_dtype_and_device_unchanged(aug: Augmentation) -> None:
    x = batch()
    out = aug(x, gen())
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.is_contiguous()
    assert torch.equal(x, batch())  # the input batch is not modified


def test_same_seed_same_result_other_seed_other_result() -> None:
    aug = Augmentation(crop_padding=2, hflip=True)
    x = batch(n=32)
    assert torch.equal(aug(x, gen(1)), aug(x, gen(1)))
    assert not torch.equal(aug(x, gen(1)), aug(x, gen(2)))


def test_hflip_flips_some_samples_and_keeps_the_others() -> None:
    x = batch(n=64)
    out = Augmentation(hflip=True)(x, gen())
    flipped = [torch.equal(out[i], torch.flip(x[i], dims=[-1])) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # each is one or the other
    assert 16 < sum(flipped) < 48  # p = 0.5


def test_crop_is_a_shifted_window_of_the_zero_padded_image() -> None:
    p = 2
    x = batch(n=64)
    out = Augmentation(crop_padding=p)(x, gen())
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    h, w = x.shape[-2:]
    offsets = []
    for i in range(len(x)):
        # Exactly one window of the padded image matches each output sample.
        matches = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + h, dx : dx + w])
        ]
        assert len(matches) == 1
        offsets.append(matches[0])
    # Offsets vary, so content moves, and shifted samples carry zero borders from the padding.
    assert len(set(offsets)) > 5
    shifted = [i for i, o in enumerate(offsets) if o != (p, p)]
    assert shifted and all((out[i] == 0).any() for i in shifted)
    assert all(not (out[i] == 0).any() for i, o in enumerate(offsets) if o == (p, p))


def test_crop_and_flip_together_flip_the_cropped_window() -> None:
    p = 1
    x = batch(n=32, c=1, h=4, w=4)
    out = Augmentation(crop_padding=p, hflip=True)(x, gen(3))
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    n_flipped = 0
    for i in range(len(x)):
        windows = [padded[i, :, dy : dy + 4, dx : dx + 4] for dy in range(3) for dx in range(3)]
        plain = any(torch.equal(out[i], win) for win in windows)
        flipped = any(torch.equal(out[i], torch.flip(win, dims=[-1])) for win in windows)
        assert plain or flipped
        n_flipped += flipped and not plain
    assert n_flipped > 0


def test_an_empty_batch_and_a_non_image_batch() -> None:
    aug = Augmentation(crop_padding=1, hflip=True)
    empty = torch.zeros(0, 1, 4, 4)
    assert aug(empty, gen()).shape == (0, 1, 4, 4)
    with pytest.raises(ValueError, match="N×C×H×W"):
        aug(torch.zeros(4, 10), gen())


def test_negative_padding_is_refused() -> None:
    with pytest.raises(ValueError, match="crop_padding"):
        Augmentation(crop_padding=-1)


def test_options_build_an_augmentation_or_none() -> None:
    assert augmentation_from(None, (3, 8, 8)) is None
    assert augmentation_from(AugmentOptions(), (3, 8, 8)) is None
    aug = augmentation_from(AugmentOptions(crop_padding=2, hflip=True), (3, 8, 8))
    assert aug == Augmentation(crop_padding=2, hflip=True)
    with pytest.raises(DataError, match=r"data\.augment\.crop_padding: .*\(8×6\), got 6"):
        augmentation_from(AugmentOptions(crop_padding=6), (1, 8, 6))

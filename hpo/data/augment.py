"""Random augmentation of training images: a random crop of the zero-padded image and a flip.

An :class:`Augmentation` is applied by the training loop to each training mini-batch, on the device
the batch lives on, vectorised over the batch (one gather, no per-sample Python loop). All its
randomness comes from the generator it is given, so a seeded run is reproducible. Image sources
build one from their ``augment`` option (:class:`AugmentOptions`) with :func:`augmentation_from`.

torch is imported inside the functions that need it, so importing :mod:`hpo.data` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from hpo.data.base import SourceOptions
from hpo.errors import DataError

if TYPE_CHECKING:
    import torch


class AugmentOptions(SourceOptions):
    """The ``augment`` block of an image source: ``{crop_padding: 4, hflip: true}``."""

    crop_padding: int = Field(
        0,
        ge=0,
        description="pad each side with this many zero pixels, then crop at a random offset",
    )
    hflip: bool = Field(False, description="flip each image left-right with probability 0.5")


@dataclass(frozen=True)
class Augmentation:
    """Random crop (of the image padded with ``crop_padding`` zeros) and horizontal flip (p=0.5).

    Call it on a float N×C×H×W batch; it returns a new batch of the same shape, on the same device.
    With ``crop_padding`` 0 and ``hflip`` off it returns the batch unchanged.
    """

    crop_padding: int = 0
    hflip: bool = False

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")

    @property
    def active(self) -> bool:
        """Whether the augmentation changes anything."""
        return self.crop_padding > 0 or self.hflip

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment the batch ``x`` (N×C×H×W), drawing every random number from ``generator``.

        The training loop passes a generator on the training device (so no host round trip per
        batch); any other device works too: the few random numbers (two offsets and a flip per
        sample) are drawn on the generator's device and moved to ``x``'s.
        """
        import torch

        if x.ndim != 4:
            raise ValueError(
                f"augmentation needs N×C×H×W image batches, got shape {tuple(x.shape)}"
            )
        if not self.active or x.shape[0] == 0:
            return x
        n, c, h, w = x.shape
        p = self.crop_padding
        gen_device = generator.device

        # Each output pixel (i, j) of sample k is read from (dy[k] + i, dx[k] + j) of the padded
        # image: per-sample index grids, flattened, then one gather for the whole batch (on the
        # CPU several times faster than advanced indexing, which also needs a permute after).
        if p:
            offsets = torch.randint(0, 2 * p + 1, (2, n), generator=generator, device=gen_device)
            dy, dx = offsets.to(x.device)
            x = torch.nn.functional.pad(x, (p, p, p, p))
        else:
            dy = dx = torch.zeros(n, dtype=torch.long, device=x.device)
        rows = dy[:, None] + torch.arange(h, device=x.device)  # N×H
        cols = dx[:, None] + torch.arange(w, device=x.device)  # N×W
        if self.hflip:
            # Reading the crop's columns right to left is the flip, folded into the same gather.
            flip = torch.rand(n, generator=generator, device=gen_device).to(x.device) < 0.5
            cols = torch.where(flip[:, None], cols.flip(1), cols)
        index = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).reshape(n, 1, h * w)
        out = x.reshape(n, c, -1).gather(2, index.expand(n, c, h * w))
        return out.reshape(n, c, h, w)


def augmentation_from(
    options: AugmentOptions | None, image_shape: tuple[int, ...]
) -> Augmentation | None:
    """The :class:`Augmentation` an ``augment`` block asks for, ``None`` if it asks for nothing.

    ``image_shape`` ends with the images' height and width (C×H×W or H×W); a padding as large as the image is refused, since its crops
    could hold no image at all.
    """
    if options is None or not (options.crop_padding or options.hflip):
        return None
    h, w = image_shape[-2:]
    if options.crop_padding >= min(h, w):
        raise DataError(
            f"data.augment.crop_padding: must be smaller than the images ({h}×{w}), "
            f"got {options.crop_padding}"
        )
    return Augmentation(crop_padding=options.crop_padding, hflip=options.hflip)


def tabular_augment_error(what: str) -> DataError:
    """The error for an ``augment`` block on data that is not images (``what`` names the data)."""
    return DataError(
        f"data.augment: augmentation (random crop / flip) needs image data; {what} is tabular"
    )

"""Floors: what a model that learned nothing scores on a suite's tasks.

Every table shows them between the teacher and the reference rows, computed by the same evaluators
with the same protocol parameters and seeds as the other rows, so a learned row that does not
beat them is visibly measuring nothing:

- ``pixels``: the image itself as the features, after the suite's resizing and normalisation
  (flattened for few-shot and linear-probe tasks; for segmentation, each pixel's channels and
  those of its 3x3 neighbourhood, so a probe can use colour and local texture);
- ``random_init``: the suite's student architecture at its initialisation for the run's seed.

An evaluator that needs a trained network (fine-tuning, SAM's mask decoder) does not apply to the
``pixels`` floor: the model raises :class:`~benchbase.errors.NotApplicable` and the cell stays empty.

Shapes: B = batch, C = the channels the student reads, S = image size, F = C·S·S.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from benchbase.capture import Captures, ModelInput, Tap
from benchbase.components import DataBundle, VitModel
from benchbase.errors import NotApplicable

FLOORS = ("pixels", "random_init")
"""The floor rows of every table, in table order."""

NEIGHBOURHOOD = 3
"""Side of the square neighbourhood whose pixels are each pixel's segmentation features."""


class PixelModel(VitModel):
    """The ``pixels`` floor: a "model" whose features are the input pixels themselves.

    ``in_chans`` and ``image_size`` are those of the images it reads (after ``input_slice``, the
    student's modality of stacked images).
    """

    def __init__(self, in_chans: int, image_size: int, input_slice: tuple[int, int] | None = None):
        super().__init__(nn.Identity())
        self.in_chans = in_chans
        self.image_size = image_size
        self.input_slice = input_slice

    @classmethod
    def reading(cls, data: DataBundle, input_slice: tuple[int, int] | None) -> PixelModel:
        """The pixels of ``data``'s images, of the channels ``input_slice`` selects (None: all)."""
        in_chans = data.in_chans if input_slice is None else input_slice[1] - input_slice[0]
        return cls(in_chans, data.image_size, input_slice)

    def _images(self, images: Tensor) -> Tensor:
        if self.input_slice is not None and images.shape[1] != self.in_chans:
            images = images[:, self.input_slice[0] : self.input_slice[1]]
        return images.float()

    def features(self, images: Tensor, pooling: str) -> Tensor:
        """[B, C, S, S] -> [B, F]: the flattened image (``pooling`` does not apply to pixels)."""
        return self._images(images).flatten(1)

    def patch_grid(self, images: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, C·9, H, W]: each pixel's 3x3 neighbourhood, zero-padded at the border of
        what it is given (the whole resized image, or each window in the segmentation's ``slide`` mode)."""
        images = self._images(images)
        batch, _, height, width = images.shape
        columns = F.unfold(images, NEIGHBOURHOOD, padding=NEIGHBOURHOOD // 2)  # [B, C·9, S·S]
        return columns.view(batch, -1, height, width)

    @property
    def token_width(self) -> int:
        return self.in_chans * NEIGHBOURHOOD**2

    @property
    def embed_dim(self) -> int:
        return self.token_width

    @property
    def patch_size(self) -> int:
        return 1

    @property
    def num_patches(self) -> int:
        return self.image_size**2

    @property
    def num_prefix_tokens(self) -> int:
        return 0

    def run(self, inp: ModelInput | Tensor, taps: list[Tap]) -> Captures:
        raise NotApplicable("the pixels floor has no tokens or attention to capture")

    def export(self) -> nn.Module:
        raise NotApplicable("the pixels floor has no network to fine-tune or to give SAM's mask decoder an embedding")

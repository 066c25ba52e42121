"""Embedded segmentation data: scikit-learn's digits pasted onto a blank canvas (no download).

Each scene is an ``image_size`` x ``image_size`` canvas with a few digits, each an 8x8 digit
upscaled (bilinear) to ``digit_size`` x ``digit_size`` and pasted at a uniformly random position;
digits may overlap, later digits on top. A pixel's label is the class of the topmost digit whose
ink there exceeds :data:`INK_THRESHOLD` (digit d is class d + 1), else background (class 0), so
every pixel is labelled and a pixel is labelled foreground exactly where the raw canvas is brighter
than the threshold. Train and test scenes draw from disjoint sets of source digit images (a
per-class split of the 1,797 images, :data:`TRAIN_DIGITS_FRACTION` of each class for training).
Images are standardised with the train scenes' statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from benchbase.components import DataBundle, DatasetInfo, SegmentationImages
from benchbase.data.tensors import normalisation, normalise, stratified_split
from benchbase.errors import BenchbaseError

INK_THRESHOLD = 0.25
"""Ink (in [0, 1], 1 = the darkest stroke) above which a pasted digit's pixel carries its label."""

TRAIN_DIGITS_FRACTION = 0.7
"""Share of each class's source digit images reserved for the train scenes; the rest go to test."""

CLASSES = ["background"] + [str(d) for d in range(10)]
"""Class names by label: 0 is background, d + 1 is digit d."""

INFO = DatasetInfo(kind="segmentation", splits={
    "train": "scenes of 70% of each class's source digit images (probe training)",
    "test": "scenes of the other 30% (mIoU)",
})


class TensorSegmentationImages(SegmentationImages):
    """In-memory images [n, C, H, W] (already normalised) with label maps [n, H', W'] long."""

    def __init__(self, images: Tensor, labels: Tensor, classes: Sequence[str]):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} label maps")
        self.images = images
        self.labels = labels.long()
        self.classes = list(classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]


def compose_scenes(
    digits: Tensor,
    digit_labels: Tensor,
    count: int,
    image_size: int,
    digits_per_scene: tuple[int, int],
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Paste randomly chosen digits onto blank canvases.

    Args:
        digits: [m, s, s] ink in [0, 1] of the source digits (s = digit size <= ``image_size``).
        digit_labels: [m] long digit classes 0-9.
        count: scenes to compose.
        digits_per_scene: (least, most) digits per scene, both inclusive.
        generator: CPU generator drawing the digits, their number and positions.

    Returns:
        ([count, 1, S, S] raw ink canvases in [0, 1], [count, S, S] long labels in 0..10) with
        S = ``image_size``.
    """
    size = digits.shape[-1]
    least, most = digits_per_scene
    canvases = torch.zeros(count, image_size, image_size)
    labels = torch.zeros(count, image_size, image_size, dtype=torch.long)
    per_scene = torch.randint(least, most + 1, (count,), generator=generator)
    for scene, number in enumerate(per_scene.tolist()):
        chosen = torch.randint(digits.shape[0], (number,), generator=generator)
        corners = torch.randint(image_size - size + 1, (number, 2), generator=generator)
        for index, (top, left) in zip(chosen.tolist(), corners.tolist()):
            ink = digits[index]
            window = (slice(top, top + size), slice(left, left + size))
            on_top = ink > INK_THRESHOLD
            canvases[scene][window] = torch.where(on_top, ink, canvases[scene][window].maximum(ink))
            labels[scene][window] = torch.where(on_top, digit_labels[index] + 1, labels[scene][window])
    return canvases.unsqueeze(1), labels


def load_digit_scenes(
    image_size: int = 32,
    digits_per_scene: tuple[int, int] = (1, 3),
    n_train: int = 600,
    n_test: int = 200,
    seed: int = 0,
    digit_size: int = 16,
) -> DataBundle:
    """Digit scenes as a segmentation :class:`DataBundle` with splits "train" and "test".

    Each split is a :class:`TensorSegmentationImages` of [n, 1, S, S] standardised images and
    [n, S, S] long label maps (S = ``image_size``), 11 classes (:data:`CLASSES`), every pixel
    labelled (``ignore_index`` None). The same ``seed`` gives the same scenes.
    """
    least, most = digits_per_scene
    if not 1 <= least <= most:
        raise BenchbaseError(f"digits_per_scene must be (least, most) with 1 <= least <= most, not {digits_per_scene}")
    if not 1 <= digit_size <= image_size:
        raise BenchbaseError(f"digit_size {digit_size} must lie between 1 and image_size {image_size}")
    if n_train < 1 or n_test < 1:
        raise BenchbaseError(f"digit scenes need n_train >= 1 and n_test >= 1, got {n_train} and {n_test}")
    from sklearn.datasets import load_digits

    source = load_digits()
    ink = torch.tensor(source.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
    ink = F.interpolate(ink, size=(digit_size, digit_size), mode="bilinear", align_corners=False).squeeze(1)
    digit_labels = torch.tensor(source.target)
    train_index, test_index = stratified_split(digit_labels, TRAIN_DIGITS_FRACTION, seed)
    generator = torch.Generator().manual_seed(seed)
    scenes = {
        name: compose_scenes(ink[index], digit_labels[index], n, image_size, digits_per_scene, generator)
        for name, index, n in (("train", train_index, n_train), ("test", test_index, n_test))
    }
    reference = scenes["train"][0]
    splits = {
        name: TensorSegmentationImages(normalise(canvases, reference), labels, CLASSES)
        for name, (canvases, labels) in scenes.items()
    }
    mean, std = normalisation(reference)
    return DataBundle(
        name="digit_scenes",
        splits=splits,
        image_size=image_size,
        in_chans=1,
        num_classes=len(CLASSES),
        image_mean=mean,
        image_std=std,
        description=(
            f"{image_size}x{image_size} scenes of {least}-{most} scikit-learn digits ({digit_size}x{digit_size}, "
            f"random positions, later on top), label = digit + 1 where its ink > {INK_THRESHOLD}, background 0; "
            f"train {n_train} / test {n_test} scenes from disjoint source digits "
            f"({TRAIN_DIGITS_FRACTION:.0%}/{1 - TRAIN_DIGITS_FRACTION:.0%} per class), seed {seed}"
        ),
        ignore_index=None,
    )

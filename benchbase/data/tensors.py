"""A dataset of images held in memory as one tensor (for small data sets)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from benchbase.components import LabeledImages


class TensorImages(LabeledImages):
    """Images [n, C, H, W] (already normalised) with integer labels [n]."""

    def __init__(self, images: Tensor, targets: Tensor, classes: Sequence[str]):
        if images.shape[0] != targets.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {targets.shape[0]} labels")
        self.images = images
        self.labels = targets.long()
        self.targets = self.labels.tolist()
        self.classes = list(classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], self.targets[index]

    def subset(self, index: Tensor) -> TensorImages:
        """The images at ``index`` ([m] long) as a new dataset with the same class names."""
        return TensorImages(self.images[index], self.labels[index], self.classes)


def channel_stats(reference: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std [1, C, 1, 1] of ``reference`` [m, C, H, W] (the std at least 1e-6)."""
    mean = reference.mean(dim=(0, 2, 3), keepdim=True)
    return mean, reference.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)


def normalise(images: Tensor, reference: Tensor) -> Tensor:
    """Standardise ``images`` [n, C, H, W] with per-channel mean/std of ``reference`` [m, C, H, W]."""
    mean, std = channel_stats(reference)
    return (images - mean) / std


def normalisation(reference: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel that :func:`normalise` standardises with, for a bundle's ``image_mean``
    and ``image_std``."""
    mean, std = channel_stats(reference)
    return tuple(mean.flatten().tolist()), tuple(std.flatten().tolist())


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of a per-class random split: ``fraction`` of each class first, the rest second."""
    generator = torch.Generator().manual_seed(seed)
    first, second = [], []
    for cls in labels.unique():
        index = (labels == cls).nonzero().flatten()
        index = index[torch.randperm(len(index), generator=generator)]
        cut = int(round(fraction * len(index)))
        first.append(index[:cut])
        second.append(index[cut:])
    return torch.cat(first).sort().values, torch.cat(second).sort().values

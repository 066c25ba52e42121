"""The embedded default data: scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes).

Ships with scikit-learn, so it needs no download. Images are upscaled to 16x16 (bilinear) so a ViT
with 4x4 patches sees 16 patches, and standardised with the statistics of the distillation split.

Splits (fixed by ``split_seed``, independent of the run's seed):
- ``base_train`` / ``base_test``: digits 0-4, 70% / 30% per class (distillation, top-1),
- ``novel``: digits 5-9, every image (few-shot episodes on classes never seen in distillation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchbase.components import DataBundle, DatasetInfo
from benchbase.data.tensors import TensorImages, normalisation, normalise, stratified_split

BASE_CLASSES = (0, 1, 2, 3, 4)

INFO = DatasetInfo(splits={
    "base_train": "digits 0-4, 70% of each class (distillation, probe training)",
    "base_test": "digits 0-4, the other 30% (top-1)",
    "novel": "digits 5-9, every image (few-shot episodes on classes never distilled)",
})


def load_digits_bundle(image_size: int = 16, train_fraction: float = 0.7, split_seed: int = 0) -> DataBundle:
    """The digits as a :class:`DataBundle` with splits base_train, base_test and novel."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8]
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target)
    base = torch.isin(labels, torch.tensor(BASE_CLASSES))
    base_index = base.nonzero().flatten()
    novel_index = (~base).nonzero().flatten()
    train_pos, test_pos = stratified_split(labels[base_index], train_fraction, split_seed)
    train_index, test_index = base_index[train_pos], base_index[test_pos]
    mean, std = normalisation(images[train_index])
    images = normalise(images, images[train_index])
    names = [str(d) for d in range(10)]
    base_names = names[: len(BASE_CLASSES)]
    splits = {
        "base_train": TensorImages(images[train_index], labels[train_index], base_names),
        "base_test": TensorImages(images[test_index], labels[test_index], base_names),
        "novel": TensorImages(images[novel_index], labels[novel_index], names),
    }
    return DataBundle(
        name="digits",
        splits=splits,
        image_size=image_size,
        in_chans=1,
        num_classes=len(BASE_CLASSES),
        image_mean=mean,
        image_std=std,
        description="scikit-learn digits (UCI optdigits test set), 8x8 upscaled to "
        f"{image_size}x{image_size}; base 0-4 split {train_fraction:.0%}/{1 - train_fraction:.0%}, novel 5-9",
    )

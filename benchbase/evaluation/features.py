"""Frozen features of a whole dataset for evaluation protocols (pooled as :mod:`benchbase.pooling` defines).

Shapes: n = images in the dataset, B = batch, T = tokens (prefix + patches), P = patches,
D = embedding width, Hd = attention heads, F = feature width (D or 2·D, see :data:`POOLINGS`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from benchbase.components import LabeledImages, VitModel
from benchbase.errors import BenchbaseError
from benchbase.pooling import POOLINGS, check_pooling, pool_tokens

__all__ = ["POOLINGS", "check_pooling", "extract_features", "pool_tokens"]

def extract_features(
    student: VitModel,
    dataset: LabeledImages,
    pooling: str = "cls+attn",
    batch_size: int = 256,
    device: torch.device = torch.device("cpu"),
) -> tuple[Tensor, Tensor]:
    """Frozen features of every image of ``dataset``, in dataset order.

    The student (already on ``device``) runs in eval mode under ``torch.inference_mode``; its
    previous train/eval mode is restored afterwards.

    Returns:
        ([n, F] float32 features on the CPU, [n] long labels).
    """
    check_pooling(pooling)
    if len(dataset) == 0:
        raise BenchbaseError("cannot extract features of an empty dataset")
    # a generator of its own: starting an iteration would otherwise draw from the global random state
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    features: list[Tensor] = []
    labels: list[Tensor] = []
    was_training = student.training
    student.eval()
    try:
        with torch.inference_mode():
            for images, targets in loader:
                features.append(student.features(images.to(device), pooling).float().cpu())
                labels.append(torch.as_tensor(targets, dtype=torch.long))
    finally:
        student.train(was_training)
    return torch.cat(features), torch.cat(labels)

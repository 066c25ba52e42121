"""Frozen features of a student for evaluation protocols.

Shapes: n = images in the dataset, B = batch, T = tokens (prefix + patches), P = patches,
D = embedding width, Hd = attention heads, F = feature width (D or 2·D, see :data:`POOLINGS`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from benchbase.capture import Tap
from benchbase.components import LabeledImages, VitModel
from benchbase.errors import BenchbaseError

POOLINGS: dict[str, str] = {
    "cls+attn": "concat(L2norm(class token), L2norm(class-attention-weighted mean of patch tokens)), F = 2·D",
    "cls": "final-norm class token, F = D",
    "mean": "mean of the final-norm patch tokens, F = D",
    "cls+mean": "concat(L2norm(class token), L2norm(mean of patch tokens)), F = 2·D",
}
"""Feature poolings by name, with what each one computes."""

_TOKENS = Tap("tokens")
_LAST_ATTN = Tap("attn", -1)


def check_pooling(pooling: str) -> None:
    """Raise :class:`BenchbaseError` unless ``pooling`` is one of :data:`POOLINGS`."""
    if pooling not in POOLINGS:
        raise BenchbaseError(f"unknown feature pooling {pooling!r}; available: {', '.join(POOLINGS)}")


def feature_taps(pooling: str) -> list[Tap]:
    """The taps :func:`pool_tokens` needs for ``pooling``: the final tokens (and the last attention)."""
    return [_TOKENS, _LAST_ATTN] if pooling == "cls+attn" else [_TOKENS]


def check_class_token(model: VitModel, pooling: str) -> None:
    """Raise :class:`BenchbaseError` when ``pooling`` needs a class token that ``model`` lacks."""
    if pooling != "mean" and getattr(model.model, "cls_token", None) is None:
        raise BenchbaseError(f"feature pooling {pooling!r} needs a class token, but the model has none; use 'mean'")


def pool_tokens(tokens: Tensor, attn: Tensor | None, num_prefix_tokens: int, pooling: str) -> Tensor:
    """One feature vector per image from the final tokens.

    Args:
        tokens: [B, T, D] tokens after the model's final norm; ``tokens[:, 0]`` is the class token
            and ``tokens[:, num_prefix_tokens:]`` the P patch tokens.
        attn: [B, Hd, T, T] last block's attention probabilities; needed only for ``"cls+attn"``.
        num_prefix_tokens: class and register tokens in front of the patches.
        pooling: one of :data:`POOLINGS`.

    Returns:
        [B, F] features.
    """
    check_pooling(pooling)
    cls = tokens[:, 0]
    patches = tokens[:, num_prefix_tokens:]
    if pooling == "cls":
        return cls
    if pooling == "mean":
        return patches.mean(dim=1)
    if pooling == "cls+mean":
        pooled = patches.mean(dim=1)
    else:  # cls+attn: the class token's attention over the patches, averaged over heads
        if attn is None:
            raise ValueError("pooling 'cls+attn' needs the last block's attention")
        weights = attn[:, :, 0, num_prefix_tokens:].mean(dim=1)  # [B, P]
        weights = weights / weights.sum(dim=-1, keepdim=True)
        pooled = torch.einsum("bp,bpd->bd", weights, patches)
    return torch.cat([F.normalize(cls, dim=-1), F.normalize(pooled, dim=-1)], dim=-1)


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

"""How a model's final tokens become evaluation features: the poolings and the patch grid.

Below :mod:`benchbase.components` (which calls it from :meth:`VitModel.features` and
:meth:`VitModel.patch_grid`), so evaluators and the interfaces share one definition.

Shapes: B = batch, T = tokens (prefix + patches), P = patches, D = embedding width, Hd = attention
heads, F = feature width (D or 2·D, see :data:`POOLINGS`), h/w = patch-grid height/width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from benchbase.capture import Tap
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


def check_class_token(has_class_token: bool, pooling: str) -> None:
    """Raise :class:`BenchbaseError` when ``pooling`` needs a class token that the model lacks."""
    if pooling != "mean" and not has_class_token:
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


def token_grid(patches: Tensor, height: int, width: int) -> Tensor:
    """Patch tokens laid out on the patch grid: [B, P, D] -> [B, D, h, w] (row-major, P = h·w).

    Raises:
        BenchbaseError: P is not ``height`` x ``width`` (a model of fixed size fed another size).
    """
    if patches.shape[1] != height * width:
        raise BenchbaseError(
            f"segmentation got {patches.shape[1]} patch tokens for a {height}x{width} patch grid; build the "
            "model with dynamic_img_size=True or feed images of its own size"
        )
    return patches.transpose(1, 2).reshape(patches.shape[0], -1, height, width)

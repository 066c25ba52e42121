"""Random views of a batch: one random resized crop with a horizontal flip per image (SMKD's
multi-crop, TinyMIM's shared crop, MAE's crop augmentation).

Geometric views commute with the per-channel normalisation the splits hold (bilinear resampling and
flips are linear), so cropping the normalised images equals cropping the raw ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from benchbase.api import BenchbaseError


def check_crop_scale(method: str, scale: Sequence[float] | None) -> tuple[float, float] | None:
    """``scale`` as an area range (0 < low <= high <= 1), or None (no crop); else a one-line error."""
    if scale is None:
        return None
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise BenchbaseError(f"{method}: crop_scale must be [low, high] with 0 < low <= high <= 1, or null; got "
                             f"{list(scale)}")
    return float(scale[0]), float(scale[1])


def random_resized_crops(
    images: Tensor, size: tuple[int, int], scale: Sequence[float], ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_prob: float = 0.5, tries: int = 10,
) -> Tensor:
    """One random resized crop per image, with a random horizontal flip, for the whole batch at once.

    Like torchvision's ``RandomResizedCrop``: the crop covers a fraction of the image area drawn
    uniformly from ``scale`` with a log-uniform aspect ratio from ``ratio``; of ``tries`` draws the
    first that fits is used, else the whole image. Boxes are continuous (no pixel rounding). Each
    crop is resampled with one batched ``grid_sample`` (bilinear), supersampled k× and
    average-pooled when it is shrunk by more than 1×, which stands in for antialiasing.

    Args:
        images: [B, C, H, W].
        size: output (height, width).

    Returns:
        [B, C, size[0], size[1]].
    """
    batch, height, width = images.shape[0], images.shape[-2], images.shape[-1]
    area = height * width * torch.empty(batch, tries).uniform_(scale[0], scale[1])
    aspect = torch.exp(torch.empty(batch, tries).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    crop_w, crop_h = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
    fits = (crop_w <= width) & (crop_h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # index of the first fitting draw
    any_fits = fits.any(dim=1)
    crop_w = torch.where(any_fits, crop_w.gather(1, first).squeeze(1), torch.tensor(float(width)))
    crop_h = torch.where(any_fits, crop_h.gather(1, first).squeeze(1), torch.tensor(float(height)))
    left = torch.rand(batch) * (width - crop_w)
    top = torch.rand(batch) * (height - crop_h)
    flip = torch.where(torch.rand(batch) < flip_prob, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)  # output [-1, 1] -> input [-1, 1] (align_corners=False)
    theta[:, 0, 0] = crop_w / width * flip
    theta[:, 0, 2] = (2 * left + crop_w) / width - 1
    theta[:, 1, 1] = crop_h / height
    theta[:, 1, 2] = (2 * top + crop_h) / height - 1
    k = max(1, math.ceil(max(float(crop_h.max()) / size[0], float(crop_w.max()) / size[1])))
    grid = F.affine_grid(theta.to(images), [batch, images.shape[1], size[0] * k, size[1] * k], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.avg_pool2d(out, k) if k > 1 else out

"""The parts of SAM's training (Kirillov et al. 2023, section 3 and appendix A) that
:mod:`.sam_training` puts together: ground-truth masks from label maps, prompts sampled from them,
the mask and IoU losses, and SAM's mask decoder run on a batch of images at once.

Shapes: B = images, P = prompted masks (over the batch), H×W = label map, h×w = token grid,
E = the image embedding's channels, K = masks the decoder returns per prompt (3 or 1), n = points
of a prompt. Points are (x, y) pixel indices of the label map, boxes (x0, y0, x1, y1) with inclusive
corners (segment-anything's ``batched_mask_to_box``); the prompt encoder adds the half-pixel shift.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from segment_anything.modeling import MaskDecoder
from segment_anything.utils.amg import batched_mask_to_box
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from benchbase.api import GT_MIN_AREA, connected_segments

MIN_AREA = GT_MIN_AREA
"""Instances of fewer pixels are dropped: EventSAM's metric counts no ground-truth segment under 12
pixels either, so the teacher learns the masks it is scored on."""

FOCAL_WEIGHT, DICE_WEIGHT = 20.0, 1.0
"""SAM's mask loss: focal and dice in a 20:1 ratio (the IoU head's MSE is added with weight 1)."""

FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0
"""The sigmoid focal loss of DETR and MaskFormer, whose mask loss SAM follows."""


def instance_masks(labels: np.ndarray, background: Sequence[int] = (), ignore_index: int | None = None,
                   min_area: int = MIN_AREA) -> np.ndarray:
    """The instances of a semantic [H, W] label map: the 8-connected components of each label other
    than ``background`` and ``ignore_index``, at least ``min_area`` pixels each (the segments of
    EventSAM's metric, :func:`~benchbase.evaluation.segments.connected_segments`).

    Returns [M, H, W] bool, by label and then in scipy's raster order within a label."""
    labels = labels.astype(np.int64)  # room for a value no label has, whatever the map's dtype
    unlabelled = int(labels.min()) - 1 if ignore_index is None else ignore_index
    kept = np.where(np.isin(labels, list(background)), unlabelled, labels)  # background: in no instance
    found = connected_segments(kept, unlabelled, connectivity=8, min_area=min_area)
    return np.stack(found) if found else np.zeros((0, *labels.shape), dtype=bool)


def uniform_pixels(masks: Tensor) -> tuple[Tensor, Tensor]:
    """One pixel drawn uniformly from each mask (torch's generator of the masks' device).

    ``masks`` [P, H, W] bool -> ((x, y) [P, 2] float, [P] bool: whether the mask has any pixel;
    an empty mask gives (0, 0))."""
    scores = torch.rand(masks.shape, device=masks.device).masked_fill(~masks, -1.0).flatten(1)
    index = scores.argmax(1)
    width = masks.shape[-1]
    return torch.stack([index % width, index // width], 1).float(), masks.flatten(1).any(1)


def noisy_boxes(masks: Tensor, noise: float = 0.1, max_noise: float = 20.0) -> Tensor:
    """SAM's box prompts: each non-empty mask's bounding box, every coordinate moved by Gaussian noise
    whose standard deviation is ``noise`` times the box's side along that axis, at most ``max_noise``
    pixels; then clipped to the image and put back in order (x0 <= x1, y0 <= y1).

    ``masks`` [P, H, W] bool -> [P, 4] float boxes."""
    boxes = batched_mask_to_box(masks).float()  # [P, 4] inclusive corners
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # [P, 4]: width, height, width, height
    moved = boxes + torch.randn(boxes.shape, device=boxes.device) * (noise * sides).clamp(max=max_noise)
    height, width = masks.shape[-2:]
    moved = torch.minimum(moved.clamp(min=0), boxes.new_tensor([width - 1, height - 1] * 2))
    low, high = torch.minimum(moved[:, :2], moved[:, 2:]), torch.maximum(moved[:, :2], moved[:, 2:])
    return torch.cat([low, high], 1)


def correction_points(predicted: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """SAM's iterative point: one pixel drawn uniformly from the error region of each prediction, a
    positive point (label 1) where the prediction misses the mask, a negative one (0) where it spills
    over it; label -1 (segment-anything's "not a point") where the prediction is exact.

    ``predicted``, ``target`` [P, H, W] bool -> ((x, y) [P, 2] float, labels [P] float)."""
    points, found = uniform_pixels(predicted ^ target)
    x, y = points.long().unbind(1)
    labels = target[torch.arange(target.shape[0], device=target.device), y, x].float()
    return points, torch.where(found, labels, torch.full_like(labels, -1.0))


def iteration_schedule(corrections: int, generator: torch.Generator | None = None) -> list[bool]:
    """Whether each iteration after the first adds a correction point: ``corrections`` that do and two
    that add nothing (only the previous mask logits are new), one of them at a random place among
    the corrections, the other at the end (SAM: 8 corrections, 11 iterations in all)."""
    schedule = [True] * corrections
    schedule.insert(int(torch.randint(corrections + 1, (), generator=generator)), False)
    return [*schedule, False]


def focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Sigmoid focal loss (alpha 0.25, gamma 2) averaged over each mask's pixels: [..., H, W] -> [...]."""
    return sigmoid_focal_loss(logits, target.to(logits.dtype), FOCAL_ALPHA, FOCAL_GAMMA, "none").mean((-2, -1))


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """1 - (2·Σ σ(x)·t + 1) / (Σ σ(x) + Σ t + 1) over each mask's pixels (DETR's): [..., H, W] -> [...]."""
    probs, target = logits.sigmoid().flatten(-2), target.to(logits.dtype).flatten(-2)
    return 1 - (2 * (probs * target).sum(-1) + 1) / (probs.sum(-1) + target.sum(-1) + 1)


def mask_iou(predicted: Tensor, target: Tensor) -> Tensor:
    """IoU of binary masks: [..., H, W] bool x2 -> [...] float (1 where both are empty)."""
    inter = (predicted & target).flatten(-2).sum(-1)
    union = (predicted | target).flatten(-2).sum(-1)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter, dtype=torch.float))


def decode(decoder: MaskDecoder, embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor
           ) -> tuple[Tensor, Tensor]:
    """segment-anything's ``MaskDecoder.predict_masks`` for prompts on different images at once.

    ``predict_masks`` repeats one image's embedding for all its prompts; here ``embeddings``
    [P, E, h, w] holds each prompt's own image embedding, and everything else is its computation:
    ``image_pe`` [1, E, h, w] (the prompt encoder's dense positional encoding), ``sparse`` [P, n', E]
    and ``dense`` [P, E, h, w] prompt embeddings -> all mask logits [P, 1 + 3, 4h, 4w] and their IoU
    predictions [P, 1 + 3] (mask 0: the single-mask output; 1-3: the multimask outputs)."""
    count = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(count, -1, -1), sparse], dim=1)
    src = embeddings + dense
    batch, channels, height, width = src.shape
    hs, src = decoder.transformer(src, image_pe.expand(count, -1, -1, -1), tokens)
    mask_tokens = hs[:, 1:1 + decoder.num_mask_tokens]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(batch, channels, height, width))
    hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    batch, channels, height, width = upscaled.shape
    masks = (hyper @ upscaled.reshape(batch, channels, height * width)).reshape(batch, -1, height, width)
    return masks, decoder.iou_prediction_head(hs[:, 0])

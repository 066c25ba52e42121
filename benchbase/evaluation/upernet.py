"""UperNet on a plain ViT, as BEiT's and MAE's semantic segmentation (mmsegmentation) build it.

A ViT has one scale; BEiT's recipe reads the outputs of four blocks (MAE's ADE20K configs: blocks
3, 5, 7 and 11 of 12) and turns them into a pyramid at 4, 8, 16 and 32 pixels a cell for 16-pixel
patches: two stride-2 deconvolutions (with BatchNorm and GELU between them), one deconvolution, the
grid as it is, and 2x2 max pooling. UperNet (Xiao et al. 2018; mmseg's ``UPerHead``) then runs a
pyramid pooling module (PPM, pool scales 1, 2, 3 and 6) on the coarsest level, adds it top-down into
1x1 lateral projections of the others (an FPN), smooths each sum with a 3x3 convolution, upsamples
every level to the finest, concatenates and fuses them with a 3x3 convolution, and classifies each
cell after dropout 0.1. Every convolution but the deconvolutions and the classifier is conv-BN-ReLU.
Left out: mmseg's auxiliary FCN head (loss weight 0.4 on the third level), a training-only extra.

Shapes: B = batch, D = the ViT's width, h/w = its patch grid, C = the head's channels, K = classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOL_SCALES = (1, 2, 3, 6)
"""The pyramid pooling module's output grids (mmseg's UPerHead default)."""

LEVELS = 4
"""Pyramid levels: blocks read, each at its own scale."""


def quarter_blocks(depth: int) -> list[int]:
    """The last block of each quarter of a ``depth``-block ViT (0-based): [2, 5, 8, 11] for 12."""
    return [max(0, depth * (level + 1) // LEVELS - 1) for level in range(LEVELS)]


def _conv_bn_relu(inputs: int, outputs: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(outputs), nn.ReLU(inplace=True))


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UperNetHead(nn.Module):
    """Four [B, D, h, w] block outputs -> [B, K, 4h, 4w] logits (see the module docstring).

    Args:
        width: D, the ViT's width.
        num_classes: K.
        channels: C, the width of the PPM, FPN and fusion (mmseg's 512 for ViT-S/B; 768 in BEiT-B's).
    """

    def __init__(self, width: int, num_classes: int, channels: int = 512):
        super().__init__()
        self.rescale = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(width, width, 2, 2), nn.BatchNorm2d(width), nn.GELU(),
                          nn.ConvTranspose2d(width, width, 2, 2)),
            nn.ConvTranspose2d(width, width, 2, 2),
            nn.Identity(),
            nn.MaxPool2d(2),
        ])
        self.ppm = nn.ModuleList([nn.Sequential(nn.AdaptiveAvgPool2d(scale), _conv_bn_relu(width, channels, 1))
                                  for scale in POOL_SCALES])
        self.bottleneck = _conv_bn_relu(width + len(POOL_SCALES) * channels, channels, 3)
        self.lateral = nn.ModuleList([_conv_bn_relu(width, channels, 1) for _ in range(LEVELS - 1)])
        self.smooth = nn.ModuleList([_conv_bn_relu(channels, channels, 3) for _ in range(LEVELS - 1)])
        self.fuse = _conv_bn_relu(LEVELS * channels, channels, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(channels, num_classes, 1))

    def forward(self, grids: Sequence[Tensor]) -> Tensor:
        """``grids``: the four blocks' [B, D, h, w] outputs, shallowest first -> [B, K, 4h, 4w]."""
        if len(grids) != LEVELS:
            raise ValueError(f"UperNet reads {LEVELS} block outputs, got {len(grids)}")
        levels = [rescale(grid) for rescale, grid in zip(self.rescale, grids)]  # [B, D, 4h..h/2, ...]
        top = levels[-1]
        pooled = [_resize(branch(top), top.shape[-2:]) for branch in self.ppm]
        merged = [lateral(level) for lateral, level in zip(self.lateral, levels)]
        merged.append(self.bottleneck(torch.cat([top, *pooled], dim=1)))  # [B, C, ., .] per level
        for index in range(LEVELS - 1, 0, -1):  # top-down: each level adds the coarser one, upsampled
            merged[index - 1] = merged[index - 1] + _resize(merged[index], merged[index - 1].shape[-2:])
        outputs = [smooth(level) for smooth, level in zip(self.smooth, merged)] + [merged[-1]]
        size = outputs[0].shape[-2:]
        fused = self.fuse(torch.cat([outputs[0], *(_resize(o, size) for o in outputs[1:])], dim=1))
        return self.classifier(fused)

"""Building blocks of :mod:`.smkd`: the iBOT projection head, the EMA teacher, the schedules,
crop sizes, the ``photometric`` choice and iBOT block masking (the crops themselves:
:mod:`.views`; their colour augmentation: :mod:`.photometric`).

All randomness comes from torch's global (CPU) generator, which the engine re-seeds every epoch,
so views and masks are reproducible and identical on any device.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import Format
from torch import Tensor, nn

from benchbase.api import BenchbaseError, Captures, ModelInput, Tap, run_vit

# --------------------------------------------------------------------------------- the head


def _weight_normed_linear(in_dim: int, out_dim: int) -> nn.Linear:
    """Linear(in_dim -> out_dim) without bias, weight = g · v / ‖v‖ per output row, g = 1 at init."""
    layer = nn.utils.parametrizations.weight_norm(nn.Linear(in_dim, out_dim, bias=False))
    with torch.no_grad():
        layer.parametrizations.weight.original0.fill_(1.0)
    return layer


class IBOTHead(nn.Module):
    """iBOT's projection head (``models/head.py::iBOTHead`` with ``nlayers=3``).

    Linear(D -> hidden) - GELU - Linear(hidden -> hidden) - GELU - Linear(hidden -> bottleneck),
    applied to every token, then L2 normalisation and a weight-normalised Linear(bottleneck -> out)
    without bias. The class token and the patch tokens use the same last layer when ``shared``
    (SMKD's ``--shared_head True``), else separate ones. The weight-norm gains ``g`` are trainable
    (SMKD's student uses ``--norm_last_layer False``). Linear weights are truncated-normal with
    std 0.02 and zero biases, as in DINO.
    """

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, out_dim: int, shared: bool = True):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = _weight_normed_linear(bottleneck, out_dim)
        self.patch_last_layer = self.last_layer if shared else _weight_normed_linear(bottleneck, out_dim)

    def cls(self, cls_tokens: Tensor) -> Tensor:
        """[B, D] class tokens -> [B, out] logits."""
        return self.last_layer(F.normalize(self.mlp(cls_tokens), dim=-1))

    def forward(self, tokens: Tensor, num_prefix: int) -> tuple[Tensor, Tensor]:
        """[B, T, D] final tokens -> class logits [B, out] and patch logits [B, N, out], N = T - num_prefix."""
        z = F.normalize(self.mlp(torch.cat([tokens[:, :1], tokens[:, num_prefix:]], dim=1)), dim=-1)
        return self.last_layer(z[:, 0]), self.patch_last_layer(z[:, 1:])


# ---------------------------------------------------------------------------- the EMA teacher


class EmaTeacher(nn.Module):
    """A deep copy of the student backbone and head, updated only as their exponential moving average.

    Its parameters never require gradients and it stays in eval mode: no drop path, no dropout.
    The official iBOT/SMKD teacher stays in train mode but is built with drop path 0 and has no
    dropout or batch norm, so for a ViT both give the same outputs. Being a submodule of the loss,
    it is saved in the loss's ``state_dict`` (checkpoints, resume).
    """

    def __init__(self, backbone: nn.Module, head: IBOTHead):
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        self.head = copy.deepcopy(head)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> EmaTeacher:  # the teacher never leaves eval mode
        return super().train(False)

    @torch.no_grad()
    def run(self, images: Tensor, taps: Sequence[Tap]) -> Captures:
        """Captures ``taps`` of the backbone on unmasked [B, C, H, W] ``images``."""
        return run_vit(self.backbone, ModelInput(images), taps)

    @torch.no_grad()
    def heads(self, tokens: Tensor, num_prefix: int) -> tuple[Tensor, Tensor]:
        """The EMA head on [B, T, D] tokens: class logits [B, K] and patch logits [B, N, K]."""
        return self.head(tokens, num_prefix)

    @torch.no_grad()
    def update(self, backbone: nn.Module, head: IBOTHead, momentum: float) -> None:
        """θ_t ← m·θ_t + (1 - m)·θ_s for every parameter of backbone and head."""
        for own, module in ((self.backbone, backbone), (self.head, head)):
            pairs = list(zip(own.parameters(), module.parameters(), strict=True))
            teacher_ps, student_ps = [t for t, _ in pairs], [s.detach() for _, s in pairs]
            torch._foreach_mul_(teacher_ps, momentum)  # one fused kernel per group, not one per tensor
            torch._foreach_add_(teacher_ps, student_ps, alpha=1.0 - momentum)


def cosine_momentum(base: float, progress: float) -> float:
    """EMA momentum rising from ``base`` at progress 0 to 1 at progress 1 on a half cosine.

    m(p) = 1 - (1 - base)·(1 + cos(π·p)) / 2, iBOT's ``cosine_scheduler(base, 1)`` over training.
    """
    return 1.0 - (1.0 - base) * (1.0 + math.cos(math.pi * progress)) / 2.0


def teacher_temperature(progress: float, warmup_temp: float, temp: float, warmup_fraction: float) -> float:
    """Linear warm-up of the teacher temperature from ``warmup_temp`` to ``temp`` over the first
    ``warmup_fraction`` of training, then constant (iBOT's per-epoch linspace, made continuous)."""
    if warmup_fraction <= 0 or progress >= warmup_fraction:
        return temp
    return warmup_temp + (temp - warmup_temp) * progress / warmup_fraction


def teacher_probs(logits: Tensor, center: Tensor, temp: float) -> Tensor:
    """Centred and sharpened teacher targets: softmax((logits - center) / temp) over the last dim."""
    return F.softmax((logits.float() - center) / temp, dim=-1)


def student_log_probs(logits: Tensor, temp: float) -> Tensor:
    """log_softmax(logits / temp) over the last dim."""
    return F.log_softmax(logits.float() / temp, dim=-1)


def ema_center(center: Tensor, batch_mean: Tensor, momentum: float) -> Tensor:
    """c ← m·c + (1 - m)·batch_mean."""
    return center * momentum + batch_mean * (1.0 - momentum)


# ------------------------------------------------------------------------------------- views


def enable_dynamic_img_size(model: nn.Module) -> None:
    """Let a timm ``VisionTransformer`` built for one image size run other sizes.

    Sets what ``dynamic_img_size=True`` sets at construction: the patch embedding accepts any size
    divisible by the patch and returns an NHWC grid, and ``_pos_embed`` resamples the position
    embedding (bicubic) to that grid. Images of the original size give the same outputs as before.
    """
    if model.dynamic_img_size:
        return
    model.dynamic_img_size = True
    model.patch_embed.strict_img_size = False
    model.patch_embed.flatten = False
    model.patch_embed.output_fmt = Format.NHWC


def local_crop_size(image_size: int, patch_size: int) -> int:
    """3/7 of ``image_size`` (96 of 224) rounded to a multiple of ``patch_size``, at least one patch."""
    return max(patch_size, round(image_size * 3 / 7 / patch_size) * patch_size)


def crop_sizes(global_size: int | None, local_size: int | None, image_size: tuple[int, int], patch_size: int
               ) -> tuple[tuple[int, int], tuple[int, int]]:
    """(height, width) of the global and of the local crops: ``global_size`` square, or the student's
    input ``image_size``; ``local_size`` square, or :func:`local_crop_size` of each global side. A
    given size that is not a positive multiple of ``patch_size`` is a one-line error."""
    for name, size in (("global_crop_size", global_size), ("local_crop_size", local_size)):
        if size is not None and (size < patch_size or size % patch_size):
            raise BenchbaseError(f"smkd: {name}={size} is not a positive multiple of the student's {patch_size}-px "
                                 f"patches; use a multiple of {patch_size} (the paper: 224 and 96 with 16)")
    crops = image_size if global_size is None else (global_size, global_size)
    local = tuple(local_crop_size(side, patch_size) for side in crops) if local_size is None else (local_size,) * 2
    return tuple(crops), local


PHOTOMETRIC = ("auto", "dino", "none")
"""Values of ``photometric``: DINO's colour augmentation of the views (:mod:`.photometric`) on
colour data only (``auto``), on any 1- or 3-channel data (``dino``) or never (``none``)."""


def photometric_stats(choice: str, mean: Sequence[float] | None, std: Sequence[float] | None
                      ) -> tuple[Tensor, Tensor] | None:
    """The data's normalisation as [1, C, 1, 1] ``mean`` and ``std`` tensors when ``photometric=choice``
    augments the views, else None: ``dino`` on data of 1 or 3 channels that declares its ``mean`` and
    ``std``, ``auto`` on such data of 3 channels (RGB), ``none`` never. A value out of
    :data:`PHOTOMETRIC`, or ``dino`` on data it cannot act on, is a one-line error."""
    check_choice("photometric", choice, PHOTOMETRIC)
    if (mean is None) != (std is None) or (mean is not None and len(mean) != len(std)):
        raise BenchbaseError(f"smkd: image_mean {mean} and image_std {std} must both be given, one value per channel")
    if choice == "none" or (choice == "auto" and (mean is None or len(mean) != 3)):
        return None
    if mean is None:
        raise BenchbaseError("smkd: photometric=dino needs the mean and std the images were normalised with, and "
                             "the data declares none (DataBundle image_mean, image_std); use photometric=auto or none")
    if len(mean) not in (1, 3):
        raise BenchbaseError(f"smkd: photometric=dino acts on 1- or 3-channel images, not {len(mean)} channels; "
                             "use photometric=auto or none")
    return torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)


# ----------------------------------------------------------------------------------- masking


def _uniform(low: float, high: float) -> float:
    """A float uniform between ``low`` and ``high`` (either order) from torch's global generator."""
    return low + (high - low) * float(torch.rand(()))


def block_mask(grid: tuple[int, int], ratio: float, aspect: tuple[float, float] = (0.3, 1 / 0.3)) -> Tensor:
    """BEiT's block-wise mask of about ``ratio`` of a ``grid`` (rows, cols), as iBOT draws it.

    Rectangles of area uniform in [(min(grid) // 3)², remaining budget] and log-uniform aspect
    ratio are added while they add at most the remaining budget of patches; after 10 failed draws
    in a row it stops, so the masked fraction never exceeds ``ratio`` and can fall short of it.

    Returns:
        [rows, cols] bool, True = masked.
    """
    rows, cols = grid
    mask = np.zeros((rows, cols), dtype=bool)  # numpy: cheap per-rectangle reads and writes
    target, count = ratio * rows * cols, 0
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    min_area = (min(rows, cols) // 3) ** 2
    while count < target:
        budget, added = target - count, 0
        for _ in range(10):
            area = _uniform(min_area, budget)
            ar = math.exp(_uniform(*log_aspect))
            h, w = round(math.sqrt(area * ar)), round(math.sqrt(area / ar))
            if w < cols and h < rows:
                top = int(torch.randint(0, rows - h + 1, ()))
                left = int(torch.randint(0, cols - w + 1, ()))
                new = h * w - int(mask[top : top + h, left : left + w].sum())
                if 0 < new <= budget:
                    mask[top : top + h, left : left + w] = True
                    added = new
            if added > 0:
                break
        if added == 0:
            break
        count += added
    return torch.from_numpy(mask)


def ibot_masks(batch: int, grid: tuple[int, int], mask_prob: float, ratio_range: Sequence[float]) -> Tensor:
    """iBOT's per-image masks: with probability 1 - ``mask_prob`` none, else a :func:`block_mask` of
    ratio uniform in ``ratio_range`` (SMKD's ``--pred_ratio 0 0.3 --pred_ratio_var 0 0.2``).

    Returns:
        [batch, rows·cols] bool, True = masked, patches in row-major order.
    """
    masks = torch.zeros(batch, grid[0] * grid[1], dtype=torch.bool)
    for i in range(batch):
        if float(torch.rand(())) < mask_prob:
            masks[i] = block_mask(grid, _uniform(ratio_range[0], ratio_range[1])).flatten()
    return masks


def check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    """One-line :class:`BenchbaseError` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise BenchbaseError(f"smkd: unknown {what} {value!r}; expected one of {', '.join(choices)}")

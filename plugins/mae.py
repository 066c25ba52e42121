"""MAE: masked-autoencoder pixel reconstruction (He et al. 2021, facebookresearch/mae). No teacher.

Each step masks ``mask_ratio`` of every image's patches at random; the student encodes only the
visible ones (``ModelInput.keep``). A decoder owned by this loss does the rest. It embeds the
student's final tokens to ``decoder_width``, fills the masked slots with a learnable mask token,
unshuffles them to image order, adds fixed 2-D sin-cos positions (zeros at prefix positions, as
MAE's class position), and runs ``decoder_depth`` transformer blocks, a LayerNorm and a linear
prediction of p²·C pixels per patch. The loss is the per-patch pixel MSE, averaged over masked
patches only. With ``norm_pix_loss`` each target patch is standardised by its own mean and
(unbiased) variance.

The constructor defaults are the paper's ViT-B decoder (8 blocks, width 512, 16 heads).
``conf/method/mae.yaml`` scales them down for the embedded suite's small students.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from benchbase.api import (Captures, Method, ModelInput, Register, StepInputs, Student, Tap, Teacher, hookimpl,
                           read_channels, sincos_pos_embed)

from . import benchbase_config_dirs  # noqa: F401  (the package's config folder)
from .views import check_crop_scale, random_resized_crops


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] -> [B, N, p²·C], patches in row-major order, pixels as (row, col, channel)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> Tensor:
    """[B, N, p²·C] -> [B, C, H, W] for a ``grid`` of (rows, cols) patches; inverse of :func:`patchify`."""
    (gh, gw), p = grid, patch_size
    x = patches.reshape(patches.shape[0], gh, gw, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(patches.shape[0], channels, gh * p, gw * p)


def random_masking(
    batch: int, num_patches: int, mask_ratio: float, device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-image random masking via argsort of uniform noise.

    Returns ``ids_keep`` [B, N_keep] long (visible patch indices, N_keep = int(N·(1 - mask_ratio))),
    ``ids_restore`` [B, N] long (position of each patch in the shuffled order) and ``mask``
    [B, N] float (1 = masked, 0 = visible, in image order).
    """
    len_keep = int(num_patches * (1 - mask_ratio))
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :len_keep] = 0
    return ids_shuffle[:, :len_keep], ids_restore, torch.gather(mask, 1, ids_restore)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int], num_prefix: int) -> Tensor:
    """MAE's fixed 2-D sin-cos position embedding (:func:`benchbase.api.sincos_pos_embed`) with
    zeros for the prefix tokens: [num_prefix + rows·cols, dim]."""
    return torch.cat([torch.zeros(num_prefix, dim), sincos_pos_embed(dim, *grid)])


def pixel_target(images: Tensor, patch_size: int, norm_pix: bool) -> Tensor:
    """Reconstruction target [B, N, p²·C], each patch standardised when ``norm_pix``."""
    target = patchify(images, patch_size)
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    return target


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per-patch MSE ([B, N, P] -> [B, N]) averaged over the patches where ``mask`` [B, N] is 1."""
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MAELoss(Method):
    """Masked-autoencoder reconstruction with a decoder owned by the loss.

    Args:
        mask_ratio: fraction of patches hidden from the encoder.
        decoder_depth: number of decoder transformer blocks.
        decoder_width: decoder embedding width (divisible by 4 and by ``decoder_heads``).
        decoder_heads: attention heads per decoder block.
        norm_pix_loss: standardise each target patch by its own mean and variance.
        crop_scale: area range of MAE's ``RandomResizedCrop`` (with a horizontal flip) applied to each
            image before masking (the pixel target is the cropped image); None: no crop.
    """

    name = "mae"
    student_arch = "vit"  # written against timm VisionTransformer students
    uses_teacher = False
    student_taps = (Tap("tokens"),)

    def __init__(
        self, mask_ratio: float = 0.75, decoder_depth: int = 8, decoder_width: int = 512,
        decoder_heads: int = 16, norm_pix_loss: bool = True, crop_scale: list[float] | None = [0.2, 1.0],  # noqa: B006
    ):
        super().__init__()
        self.crop_scale = check_crop_scale("mae", crop_scale)
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.decoder_depth, self.decoder_width, self.decoder_heads = decoder_depth, decoder_width, decoder_heads

    def setup(self, student: Student, teacher: Teacher | None) -> None:
        """Build the decoder for the student's width, patch grid, prefix tokens and channels."""
        device = student.model.patch_embed.proj.weight.device
        self.patch_size, self.num_prefix = student.patch_size, student.num_prefix_tokens
        self.grid = tuple(student.model.patch_embed.grid_size)
        self.channels = student.model.patch_embed.proj.in_channels
        self.input_slice = student.input_slice  # the pixel target: the channels the student reads
        width = self.decoder_width
        self.decoder_embed = nn.Linear(student.embed_dim, width, device=device)
        self.mask_token = nn.Parameter(torch.empty(1, 1, width, device=device))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(width, self.grid, self.num_prefix).to(device))
        self.decoder_blocks = nn.Sequential(*[
            Block(width, self.decoder_heads, mlp_ratio=4.0, qkv_bias=True,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6), device=device)
            for _ in range(self.decoder_depth)
        ])
        self.decoder_norm = nn.LayerNorm(width, eps=1e-6, device=device)
        self.decoder_pred = nn.Linear(width, self.patch_size**2 * self.channels, device=device)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():  # MAE's init: xavier-uniform linears with zero bias
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def make_inputs(self, images: Tensor, labels: Tensor) -> StepInputs:
        """Crop and flip each image (``crop_scale``), then mask it; ``extras`` holds ``ids_restore``
        [B, N] and ``mask`` [B, N] (1 = masked)."""
        n = self.grid[0] * self.grid[1]
        if self.crop_scale is not None:
            images = random_resized_crops(images, tuple(images.shape[-2:]), self.crop_scale)
        ids_keep, ids_restore, mask = random_masking(images.shape[0], n, self.mask_ratio, images.device)
        return StepInputs(
            student=ModelInput(images, keep=ids_keep), teacher=None, labels=labels,
            extras={"ids_restore": ids_restore, "mask": mask},
        )

    def decode(self, tokens: Tensor, ids_restore: Tensor) -> Tensor:
        """Encoder tokens [B, prefix + N_keep, D_s] -> pixel predictions [B, N, p²·C] in image order."""
        x = self.decoder_embed(tokens)
        prefix, visible = x[:, : self.num_prefix], x[:, self.num_prefix :]
        b, n = ids_restore.shape
        x = torch.cat([visible, self.mask_token.expand(b, n - visible.shape[1], -1)], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([prefix, x], dim=1) + self.decoder_pos_embed
        x = self.decoder_pred(self.decoder_norm(self.decoder_blocks(x)))
        return x[:, self.num_prefix :]

    def forward(self, student: Captures, teacher: None, inputs: StepInputs) -> dict[str, Tensor]:
        """Term ``{"mse_masked"}``: reconstruction error on the masked patches."""
        pred = self.decode(student[self.student_taps[0]], inputs.extras["ids_restore"])
        target = pixel_target(read_channels(inputs.student.images, self.input_slice), self.patch_size,
                              self.norm_pix_loss)
        return {"mse_masked": masked_mse(pred, target, inputs.extras["mask"])}


@hookimpl
def benchbase_register_methods(register: Register) -> None:
    register(MAELoss.name, MAELoss)


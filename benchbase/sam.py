"""SAM's ViT image encoder (segment-anything's ``ImageEncoderViT``) as a benchbase model.

The encoder stays unmodified; :func:`run_sam` reads its internals through forward hooks, like
:func:`benchbase.capture.run_vit` does for timm. Shapes: B = batch, h×w = token grid
(``img_size / patch_size`` per side), N = h·w tokens (SAM has no class token), D = width,
Hd = heads, d = D / Hd, ws = a windowed block's ``window_size``, nW = windows per image (the grid
padded bottom/right to a multiple of ws, then cut into ws×ws windows).

Tap semantics (see :data:`SAM_TAP_SHAPES`):

* ``block``: output of block i, [B, N, D] (SAM's [B, h, w, D] flattened row-major).
* ``attn``: the softmax attention probabilities of block i, relative position bias included,
  exactly as SAM's ``Attention.forward`` computes them. A global block gives [B, Hd, N, N]. A
  windowed block gives [B·nW, Hd, ws², ws²]: window index b·nW + r·(windows per row) + c,
  tokens row-major inside the window, zero padding tokens included (see
  :func:`window_attention_to_dense`).
* ``q``/``k``/``v``: [B, Hd, N, d] for a global block, [B·nW, Hd, ws², d] for a windowed one
  (q unscaled), from a hook on ``blocks[i].attn.qkv``.
* ``attn_out``: the attention branch after ``proj`` and window un-partition, before the residual,
  [B, N, D].
* ``mlp_out``: the MLP branch before the residual, [B, N, D].
* ``tokens``: the neck's output (the image embedding SAM's mask decoder reads), [B, N, out_chans].
* ``logits``: not available (SAM's encoder has no classifier).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import (
    Attention,
    ImageEncoderViT,
    add_decomposed_rel_pos,
    window_unpartition,
)
from torch import Tensor, nn

from benchbase.capture import Captures, ModelInput, Tap, deepest_block, register_block_hooks
from benchbase.components import Student, Teacher
from benchbase.errors import BenchbaseError
from benchbase.models import read_state_dict

SAM_TAP_SHAPES: dict[str, str] = {
    "block": "[B, N, D] output of block i",
    "attn": "[B, Hd, N, N] (global block) or [B·nW, Hd, ws², ws²] (windowed block) softmax attention with rel-pos",
    "q": "[B, Hd, N, d] or [B·nW, Hd, ws², d] queries (unscaled)",
    "k": "[B, Hd, N, d] or [B·nW, Hd, ws², d] keys",
    "v": "[B, Hd, N, d] or [B·nW, Hd, ws², d] values",
    "attn_out": "[B, N, D] attention branch after window un-partition, before the residual",
    "mlp_out": "[B, N, D] MLP branch before the residual",
    "tokens": "[B, N, out_chans] neck output",
}

SAM_PRESETS: dict[str, dict[str, Any]] = {
    # segment_anything.build_sam: build_sam_vit_b / _l / _h (image 1024, patch 16, window 14, out 256).
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": (5, 11, 17, 23)},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": (7, 15, 23, 31)},
    # A CPU-sized encoder of the same class (research notes 5.3): a 4×4 grid of 16-pixel patches.
    "tiny": {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": (1,), "img_size": 64,
             "window_size": 2, "out_chans": 32},
}
_SAM_DEFAULTS: dict[str, Any] = {"img_size": 1024, "patch_size": 16, "window_size": 14, "out_chans": 256}
_CHECKPOINT_PREFIX = "image_encoder."


def build_sam_encoder(
    name: str = "vit_b",
    img_size: int | None = None,
    in_chans: int = 3,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    window_size: int | None = None,
    global_attn_indexes: Sequence[int] | None = None,
    patch_size: int | None = None,
    out_chans: int | None = None,
    checkpoint: str | Path | None = None,
) -> ImageEncoderViT:
    """SAM's ``ImageEncoderViT`` built with ``build_sam._build_sam``'s arguments for preset ``name``.

    ``name`` is one of :data:`SAM_PRESETS` (``vit_b``, ``vit_l``, ``vit_h``: SAM's encoders at 1024
    px; ``tiny``: a small CPU configuration). Every other argument that is not None overrides the
    preset (``img_size`` 512 is EventSAM's size). As in SAM: mlp_ratio 4, qkv bias, relative
    position bias, LayerNorm eps 1e-6, absolute position embedding of the grid size.

    ``checkpoint``: a full SAM checkpoint (its ``image_encoder.*`` tensors are used; prompt encoder
    and mask decoder are ignored) or a bare encoder state dict, read with ``weights_only=True``.
    A checkpoint made for a larger image (SAM's 1024 weights in a 512 encoder) is cropped as
    EventSAM's released code does: ``pos_embed`` to its top-left h×w, the global blocks'
    rel-pos tables (2·h_ckpt − 1 rows) to their centre 2·h − 1 rows; windowed tables do not depend
    on the image size. Any other difference raises a one-line :class:`BenchbaseError` naming keys.
    """
    if name not in SAM_PRESETS:
        raise BenchbaseError(f"unknown SAM encoder {name!r}; choose one of {', '.join(SAM_PRESETS)}")
    overrides = {"img_size": img_size, "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
                 "window_size": window_size, "global_attn_indexes": global_attn_indexes,
                 "patch_size": patch_size, "out_chans": out_chans}
    cfg = {**_SAM_DEFAULTS, **SAM_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    cfg["global_attn_indexes"] = tuple(cfg["global_attn_indexes"])
    if cfg["img_size"] % cfg["patch_size"] or cfg["embed_dim"] % cfg["num_heads"]:
        raise BenchbaseError(
            f"SAM encoder {name!r}: img_size {cfg['img_size']} must be a multiple of patch_size "
            f"{cfg['patch_size']} and embed_dim {cfg['embed_dim']} of num_heads {cfg['num_heads']}"
        )
    if any(not 0 <= i < cfg["depth"] for i in cfg["global_attn_indexes"]):
        raise BenchbaseError(
            f"SAM encoder {name!r}: global_attn_indexes {list(cfg['global_attn_indexes'])} must lie in "
            f"[0, {cfg['depth']})"
        )
    encoder = ImageEncoderViT(
        depth=cfg["depth"],
        embed_dim=cfg["embed_dim"],
        img_size=cfg["img_size"],
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=cfg["num_heads"],
        patch_size=cfg["patch_size"],
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=cfg["global_attn_indexes"],
        window_size=cfg["window_size"],
        out_chans=cfg["out_chans"],
        in_chans=in_chans,
    )
    if checkpoint is not None:
        load_sam_checkpoint(encoder, checkpoint)
    return encoder


def load_sam_checkpoint(encoder: ImageEncoderViT, path: str | Path) -> None:
    """Load a SAM (or bare encoder) checkpoint into ``encoder``; see :func:`build_sam_encoder`."""
    state = read_state_dict(path)
    if any(key.startswith(_CHECKPOINT_PREFIX) for key in state):
        state = {key[len(_CHECKPOINT_PREFIX):]: value for key, value in state.items()
                 if key.startswith(_CHECKPOINT_PREFIX)}
    state = _crop_to_grid(encoder, state)
    own = encoder.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = sorted(f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
                    for key in set(own) & set(state) if state[key].shape != own[key].shape)
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(keys[:3])}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                 if keys]
        raise BenchbaseError(
            f"checkpoint {path} does not fit this SAM image encoder ({'; '.join(parts)}); "
            "use a checkpoint of the configured preset (vit_b/vit_l/vit_h) or change the preset"
        )
    encoder.load_state_dict(state)


def _crop_to_grid(encoder: ImageEncoderViT, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """EventSAM's resize of a larger-image checkpoint: crop ``pos_embed`` and global rel-pos tables."""
    grid = encoder.img_size // encoder.patch_embed.proj.kernel_size[0]
    pos = state.get("pos_embed")
    if pos is None or pos.ndim != 4 or min(pos.shape[1:3]) <= grid:
        return state
    ckpt_grid, state = pos.shape[1], dict(state)
    state["pos_embed"] = pos[:, :grid, :grid]
    start = ckpt_grid - grid  # table row r is the offset r - (ckpt_grid - 1); keep offsets -(grid-1)..grid-1
    for index, block in enumerate(encoder.blocks):
        if block.window_size == 0:
            for axis in ("h", "w"):
                key = f"blocks.{index}.attn.rel_pos_{axis}"
                if key in state and state[key].shape[0] == 2 * ckpt_grid - 1:
                    state[key] = state[key][start:start + 2 * grid - 1]
    return state


def _split_qkv(attn: Attention, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``attn.qkv`` output [B', h, w, 3D] -> q, k, v each [B'·Hd, h·w, d], as ``Attention.forward``."""
    batch, height, width, _ = qkv.shape
    qkv = qkv.reshape(batch, height * width, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, batch * attn.num_heads, height * width, -1).unbind(0)
    return q, k, v


def _probabilities(attn: Attention, q: Tensor, k: Tensor, size: tuple[int, int]) -> Tensor:
    """softmax(q·scale kᵀ + decomposed rel-pos bias): [B'·Hd, h·w, d] x2 -> [B'·Hd, h·w, h·w]."""
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if attn.use_rel_pos:
        logits = add_decomposed_rel_pos(logits, q, attn.rel_pos_h, attn.rel_pos_w, size, size)
    return logits.softmax(dim=-1)


def sam_attention(attn: Attention, x: Tensor) -> Tensor:
    """The attention probabilities SAM's ``attn`` computes for a token map ``x`` [B, h, w, D].

    Returns [B, Hd, h·w, h·w]. A grid larger than the block's rel-pos table (a windowed block's
    attention applied to the full grid, as EventSAM's released teacher does) uses SAM's own linear
    interpolation of the table (``get_rel_pos``).
    """
    q, k, _ = _split_qkv(attn, attn.qkv(x))
    return _probabilities(attn, q, k, (x.shape[1], x.shape[2])).unflatten(0, (x.shape[0], attn.num_heads))


def window_attention_to_dense(attn: Tensor, grid: tuple[int, int], window: int) -> Tensor:
    """A windowed block's ``attn`` tap [B·nW, Hd, ws², ws²] as the block-diagonal [B, Hd, N, N] matrix.

    Entry (query, key) holds the probability the query's window gave the key; pairs in different
    windows are 0. Padding tokens are dropped, so a row of a window that holds padding sums to
    less than 1 (the mass that went to padding).
    """
    (height, width), heads = grid, attn.shape[1]
    rows, cols = -(-height // window), -(-width // window)
    padded_h, padded_w = rows * window, cols * window
    batch = attn.shape[0] // (rows * cols)
    inner = torch.arange(window, device=attn.device)
    # position in the padded grid of token (i, j) of window (r, c): [nW, ws²]
    y = torch.arange(rows, device=attn.device)[:, None, None, None] * window + inner[None, None, :, None]
    x = torch.arange(cols, device=attn.device)[None, :, None, None] * window + inner[None, None, None, :]
    index = (y * padded_w + x).reshape(rows * cols, window * window)
    dense = attn.new_zeros(batch, heads, padded_h * padded_w, padded_h * padded_w)
    blocks = attn.reshape(batch, rows * cols, heads, window * window, window * window).transpose(1, 2)
    dense[:, :, index[:, :, None], index[:, None, :]] = blocks
    dense = dense.reshape(batch, heads, padded_h, padded_w, padded_h, padded_w)[:, :, :height, :width, :height, :width]
    return dense.reshape(batch, heads, height * width, height * width)


_Hook = Callable[[nn.Module, tuple, Tensor], None]


def _store_qkv(attn: Attention, kinds: set[str], store: dict[str, Tensor]) -> _Hook:
    def hook(_module: nn.Module, _inputs: tuple, qkv: Tensor) -> None:
        batch, height, width, _ = qkv.shape
        q, k, v = _split_qkv(attn, qkv)
        for kind, value in (("q", q), ("k", k), ("v", v)):
            if kind in kinds:
                store[kind] = value.unflatten(0, (batch, attn.num_heads))
        if "attn" in kinds:
            store["attn"] = _probabilities(attn, q, k, (height, width)).unflatten(0, (batch, attn.num_heads))

    return hook


def token_grid(encoder: ImageEncoderViT) -> tuple[int, int]:
    """The (h, w) token grid of ``encoder``, fixed by its position embedding."""
    side = encoder.img_size // encoder.patch_embed.proj.kernel_size[0]
    return side, side


def run_sam(encoder: ImageEncoderViT, inp: ModelInput | Tensor, taps: Sequence[Tap]) -> Captures:
    """Run SAM's image encoder on ``inp`` ([B, C, img_size, img_size]) and return ``taps``.

    Patch embedding (``ModelInput.mask`` [B, N] marks tokens replaced by ``mask_token``, one [D]
    vector or one per token, [B, h, w, D]: EventSAM's token mixing) plus the position embedding, then
    the blocks up to the deepest requested one (early exit); the neck runs only for ``tokens``.
    Shapes are in :data:`SAM_TAP_SHAPES` and the module docstring. ``ModelInput.keep`` (patch
    dropping) and ``logits`` are not supported: windowed attention needs the whole grid and the
    encoder has no classifier.
    """
    if isinstance(inp, Tensor):
        inp = ModelInput(inp)
    if inp.keep is not None:
        raise ValueError("SAM's windowed attention needs the whole token grid; ModelInput.keep is not supported")
    depth = len(encoder.blocks)
    resolved = [(tap, tap.resolve(depth)) for tap in taps]
    if any(res.kind == "logits" for _, res in resolved):
        raise ValueError("SAM's image encoder has no classifier; it has no logits tap")
    grid = token_grid(encoder)
    patch = encoder.patch_embed.proj.kernel_size[0]
    if tuple(inp.images.shape[-2:]) != (grid[0] * patch, grid[1] * patch):
        raise BenchbaseError(
            f"this SAM encoder takes {encoder.img_size}x{encoder.img_size} images (its position embedding "
            f"is fixed) but got {tuple(inp.images.shape[-2:])}; pad or resize the images, or build it with "
            "that img_size"
        )
    stores, handles = register_block_hooks(encoder.blocks, resolved, _store_qkv)
    try:
        x = encoder.patch_embed(inp.images)  # [B, h, w, D]
        if inp.mask is not None:
            if inp.mask_token is None:
                raise ValueError("ModelInput.mask needs a mask_token")
            x = torch.where(inp.mask.reshape(x.shape[:-1]).unsqueeze(-1), inp.mask_token.to(x.dtype), x)
        if encoder.pos_embed is not None:
            x = x + encoder.pos_embed
        for block in encoder.blocks[: deepest_block([res for _, res in resolved], depth) + 1]:
            x = block(x)
    finally:
        for handle in handles:
            handle.remove()
    out, neck = Captures(), None
    for tap, res in resolved:
        if res.kind == "tokens":
            if neck is None:
                neck = encoder.neck(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)  # [B, N, out_chans]
            out[tap] = neck
            continue
        value = stores[res.block][res.kind]
        window = encoder.blocks[res.block].window_size
        if res.kind == "attn_out" and window > 0:  # [B·nW, ws, ws, D] -> [B, h, w, D]
            padded = (-(-grid[0] // window) * window, -(-grid[1] // window) * window)
            value = window_unpartition(value, window, padded, grid)
        out[tap] = value.flatten(1, 2) if res.kind in ("block", "attn_out", "mlp_out") else value
    return out


class _SamModel:
    """Capture and size properties shared by :class:`SamStudent` and :class:`SamTeacher`."""

    model: ImageEncoderViT
    checkpoint_loader = staticmethod(load_sam_checkpoint)  # a full SAM checkpoint's image_encoder.* weights

    @property
    def embed_dim(self) -> int:
        return self.model.patch_embed.proj.out_channels

    @property
    def in_chans(self) -> int:
        return self.model.patch_embed.proj.in_channels

    @property
    def token_width(self) -> int:
        """The neck's output channels (the ``tokens`` tap)."""
        return self.model.neck[0].out_channels

    @property
    def patch_size(self) -> int:
        return self.model.patch_embed.proj.kernel_size[0]

    @property
    def grid(self) -> tuple[int, int]:
        return token_grid(self.model)

    @property
    def num_patches(self) -> int:
        height, width = self.grid
        return height * width

    @property
    def num_prefix_tokens(self) -> int:
        return 0

    @property
    def has_drop_path(self) -> bool:
        """SAM's blocks have no stochastic depth."""
        return False

    def _capture(self, inp: ModelInput | Tensor, taps: Sequence[Tap]) -> Captures:
        return run_sam(self.model, inp, taps)

    def as_teacher(self, source: str = "") -> SamTeacher:
        """This encoder frozen as a :class:`SamTeacher`, reading the same channels."""
        teacher = SamTeacher(self.model, source)
        teacher.input_slice = self.input_slice
        return teacher


class SamStudent(_SamModel, Student):
    """A trainable SAM image encoder; ``export()`` returns the plain ``ImageEncoderViT``."""


class SamTeacher(_SamModel, Teacher):
    """A frozen SAM image encoder run in inference mode (early exit at the deepest tap)."""


def pad_to_size(images: Tensor, size: int) -> Tensor:
    """Zero-pad [B, C, H, W] bottom/right to [B, C, size, size] (SAM's and EventSAM's padding)."""
    height, width = images.shape[-2:]
    if height > size or width > size:
        raise BenchbaseError(f"images of {height}x{width} are larger than the SAM encoder's {size}x{size}; resize them")
    return F.pad(images, (0, size - width, 0, size - height))

"""Capture of intermediate tensors from unmodified timm Vision Transformers.

A loss declares the tensors it needs as :class:`Tap` objects; :func:`run_vit` runs the model only
as deep as the deepest requested tap (the teacher's early exit) and keeps exactly those tensors.
Block internals are read through forward hooks on the model's own modules (``blocks[i]``,
``blocks[i].attn.qkv``, ``blocks[i].attn``, ``blocks[i].mlp``); the modules keep their fused
attention, and attention maps are computed from the captured q/k only for the blocks a tap names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

TapKind = Literal["block", "attn", "q", "k", "v", "attn_out", "mlp_out", "tokens", "logits"]
_BLOCK_KINDS = {"block", "attn", "q", "k", "v", "attn_out", "mlp_out"}
_QKV_KINDS = {"attn", "q", "k", "v"}

TAP_SHAPES: dict[str, str] = {
    "block": "[B, T, D] output of block i (T = prefix tokens + patches)",
    "attn": "[B, H, T, T] softmax(q kᵀ / sqrt(d_head)) of block i",
    "q": "[B, H, T, d_head] queries of block i (after q_norm)",
    "k": "[B, H, T, d_head] keys of block i (after k_norm)",
    "v": "[B, H, T, d_head] values of block i",
    "attn_out": "[B, T, D] attention branch of block i before the residual",
    "mlp_out": "[B, T, D] MLP branch of block i before the residual",
    "tokens": "[B, T, D] final tokens after the model's last norm",
    "logits": "[B, K] classifier output (K classes)",
}


@dataclass(frozen=True)
class Tap:
    """One intermediate tensor a loss asks for.

    ``kind`` is one of :data:`TAP_SHAPES`; ``block`` indexes ``model.blocks`` (negative counts from
    the end, ``-1`` is the last block) and is ignored for ``tokens`` and ``logits``.
    """

    kind: TapKind
    block: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in TAP_SHAPES:
            raise ValueError(f"unknown tap kind {self.kind!r}; expected one of {sorted(TAP_SHAPES)}")
        if self.kind in _BLOCK_KINDS and self.block is None:
            raise ValueError(f"tap kind {self.kind!r} needs a block index")

    def resolve(self, depth: int) -> Tap:
        """The same tap with a non-negative block index for a model of ``depth`` blocks."""
        if self.kind not in _BLOCK_KINDS:
            return Tap(self.kind)
        index = self.block + depth if self.block < 0 else self.block
        if not 0 <= index < depth:
            raise ValueError(f"tap {self} is out of range for a model with {depth} blocks")
        return Tap(self.kind, index)


class Captures(dict):
    """Captured tensors keyed by the :class:`Tap` objects that requested them."""

    def __missing__(self, tap: Tap) -> Tensor:
        raise KeyError(f"{tap} was not captured; add it to the loss's taps")


@dataclass
class ModelInput:
    """What one model sees in a step.

    images: [B, C, H, W] normalised pixels.
    mask: [B, N] bool, patches replaced by ``mask_token`` before the position embedding (iBOT/SMKD).
    mask_token: [D] learnable embedding used where ``mask`` is true.
    keep: [B, N_keep] long, the only patch indices the encoder sees (MAE); prefix tokens are kept.
    """

    images: Tensor
    mask: Tensor | None = None
    mask_token: Tensor | None = None
    keep: Tensor | None = None


def deepest_block(taps: Iterable[Tap], depth: int) -> int:
    """Index of the last block that must run to produce ``taps`` (``depth - 1`` for final taps)."""
    deepest = -1
    for tap in taps:
        tap = tap.resolve(depth)
        deepest = max(deepest, depth - 1 if tap.block is None else tap.block)
    return deepest


def final_needed(resolved: Sequence[tuple[Tap, Tap]]) -> bool:
    """Whether any tap needs the whole network (``tokens`` or ``logits``)."""
    return any(t.block is None for _, t in resolved)


def _qkv_hook(attn: nn.Module, kinds: set[str], store: dict[str, Tensor]):
    def hook(_module: nn.Module, _inputs: tuple, qkv: Tensor) -> None:
        batch, tokens, _ = qkv.shape
        q, k, v = qkv.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if "q" in kinds:
            store["q"] = q
        if "k" in kinds:
            store["k"] = k
        if "v" in kinds:
            store["v"] = v
        if "attn" in kinds:
            store["attn"] = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)

    return hook


def _output_hook(store: dict[str, Tensor], kind: str):
    def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        store[kind] = output

    return hook


def register_block_hooks(
    blocks: Sequence[nn.Module], resolved: Sequence[tuple[Tap, Tap]], qkv_hook
) -> tuple[dict[int, dict[str, Tensor]], list]:
    """Forward hooks that store the resolved block taps, one store per block index.

    ``qkv_hook(attn, kinds, store)`` builds the hook on ``blocks[i].attn.qkv`` (architectures lay
    out their qkv projection differently); block, attention-branch and MLP-branch outputs are
    stored as the modules return them. Returns the stores and the hook handles to remove.
    """
    stores: dict[int, dict[str, Tensor]] = {res.block: {} for _, res in resolved if res.block is not None}
    handles = []
    for index, store in stores.items():
        kinds = {res.kind for _, res in resolved if res.block == index}
        block = blocks[index]
        if kinds & _QKV_KINDS:
            handles.append(block.attn.qkv.register_forward_hook(qkv_hook(block.attn, kinds, store)))
        for kind, module in (("attn_out", block.attn), ("mlp_out", block.mlp), ("block", block)):
            if kind in kinds:
                handles.append(module.register_forward_hook(_output_hook(store, kind)))
    return stores, handles


def embed(model: nn.Module, inp: ModelInput) -> Tensor:
    """Patch embedding, optional mask tokens, position embedding and patch selection.

    Returns [B, T, D] tokens ready for ``model.blocks``.
    """
    x = model.patch_embed(inp.images)  # [B, N, D], or [B, h, w, D] for dynamic_img_size models
    if inp.mask is not None:
        if inp.mask_token is None:
            raise ValueError("ModelInput.mask needs a mask_token")
        mask = inp.mask.reshape(x.shape[:-1]).unsqueeze(-1)
        x = torch.where(mask, inp.mask_token.to(x.dtype), x)
    x = model._pos_embed(x)  # interpolates the position embedding for other image sizes
    if inp.keep is not None:
        prefix = model.num_prefix_tokens
        index = inp.keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        patches = torch.gather(x[:, prefix:], 1, index)
        x = torch.cat([x[:, :prefix], patches], dim=1)
    x = model.patch_drop(x)
    return model.norm_pre(x)


def run_vit(model: nn.Module, inp: ModelInput | Tensor, taps: Sequence[Tap]) -> Captures:
    """Run a timm ``VisionTransformer`` and return exactly the tensors in ``taps``.

    The model runs block by block up to the deepest requested block and stops there unless a
    ``tokens`` or ``logits`` tap needs the whole network; when only q/k/v/attn are asked of that
    deepest block, it runs only that block's norm and qkv projection. Shapes are listed in
    :data:`TAP_SHAPES`.
    """
    if isinstance(inp, Tensor):
        inp = ModelInput(inp)
    depth = len(model.blocks)
    resolved = [(tap, tap.resolve(depth)) for tap in taps]
    stores, handles = register_block_hooks(model.blocks, resolved, _qkv_hook)
    try:
        x = embed(model, inp)
        last = deepest_block([t for _, t in resolved], depth)
        # the deepest block stops at its qkv projection when only q/k/v/attn are asked of it
        partial = not final_needed(resolved) and {t.kind for _, t in resolved if t.block == last} <= _QKV_KINDS
        for block in model.blocks[: last if partial else last + 1]:
            x = block(x)
        if partial:
            block = model.blocks[last]
            block.attn.qkv(block.norm1(x))
    finally:
        for handle in handles:
            handle.remove()
    out = Captures()
    if final_needed(resolved):
        tokens = model.norm(x)
        for tap, res in resolved:
            if res.kind == "tokens":
                out[tap] = tokens
            elif res.kind == "logits":
                out[tap] = model.forward_head(tokens)
    for tap, res in resolved:
        if res.block is not None:
            out[tap] = stores[res.block][res.kind]
    return out

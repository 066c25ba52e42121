"""Building timm ViTs from configs, and loading checkpoints safely."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import DropPath
from torch import nn

from benchbase.components import DataBundle
from benchbase.errors import BenchbaseError

_SIZE_KEYS = ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio")


def input_channels(cfg: Any, data: DataBundle) -> int:
    """Channels a model configured by ``cfg`` reads: its ``input`` modality's, or all of them."""
    window = data.channels(cfg.get("input"))
    return data.in_chans if window is None else window[1] - window[0]


def build_vit(cfg: Any, data: DataBundle, pretrained: bool = False) -> nn.Module:
    """A timm ``VisionTransformer`` for ``data``'s images, sized by ``cfg`` (a ModelConfig)."""
    sizes = {key: cfg[key] for key in _SIZE_KEYS if cfg.get(key) is not None}
    sizes.update(cfg.get("params") or {})
    fixed = sizes.get("pos_embed") == "sincos"  # MAE's and TinyMIM's fixed table; timm's own options pass through
    if fixed:
        sizes["pos_embed"] = "learn"
    schedule = cfg.get("drop_path_schedule", "linear")
    if schedule not in DROP_PATH_SCHEDULES:
        raise BenchbaseError(f"drop_path_schedule={schedule!r}; use one of {', '.join(DROP_PATH_SCHEDULES)}")
    model = _create(cfg, data, pretrained, sizes)
    if fixed:
        grid = model.patch_embed.grid_size
        table = sincos_pos_embed(model.embed_dim, grid[0], grid[1])
        prefix = model.pos_embed.shape[1] - grid[0] * grid[1]  # 1 for the class token, 0 with no_embed_class
        model.pos_embed.data.copy_(torch.cat([torch.zeros(prefix, model.embed_dim), table])[None])
        model.pos_embed.requires_grad_(False)
    if schedule == "constant":
        set_drop_path(model, cfg.get("drop_path", 0.0))
    return model


def sincos_pos_embed(dim: int, height: int, width: int) -> torch.Tensor:
    """MAE's fixed 2-D sine-cosine position table [height * width, dim], row-major over the grid.

    The first ``dim / 2`` channels encode the column and the last ``dim / 2`` the row (MAE's
    ``get_2d_sincos_pos_embed`` meshes the width first); each half is ``[sin(p w_i), cos(p w_i)]``
    with ``w_i = 10000^(-i / (dim / 4))``, ``i < dim / 4``. The class token's entry is zero.
    """
    if dim % 4:
        raise BenchbaseError(f"a sin-cos position embedding needs a width divisible by 4; got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(positions: torch.Tensor) -> torch.Tensor:  # [P] -> [P, dim / 2]
        angles = positions[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                indexing="ij")
    return torch.cat([encode(cols.flatten()), encode(rows.flatten())], dim=1).float()


DROP_PATH_SCHEDULES = ("linear", "constant")


def set_drop_path(model: nn.Module, rate: float) -> None:
    """Give every block of a timm ViT the same stochastic-depth ``rate`` (TinyMIM's constant 0.1)
    in place of timm's linear ramp over depth."""
    for block in model.blocks:
        for name in ("drop_path1", "drop_path2"):
            setattr(block, name, DropPath(rate) if rate > 0 else nn.Identity())


def _create(cfg: Any, data: DataBundle, pretrained: bool, sizes: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(
            cfg.model,
            pretrained=pretrained,
            img_size=data.image_size,
            in_chans=input_channels(cfg, data),
            num_classes=data.num_classes,
            drop_path_rate=cfg.get("drop_path", 0.0),
            dynamic_img_size=True,  # other image sizes interpolate the position embedding
            **sizes,
        )
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise BenchbaseError(f"unknown timm model {cfg.model!r}; see timm.list_models()") from None
        raise


HEADS_KEY = "block_heads"
"""Checkpoint entry listing each block's attention head count (a TinyMIM student's last block has
the teacher's head count: same parameters, another split)."""


def _read(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BenchbaseError(f"checkpoint {path} does not exist; pass the path of a .pt/.pth file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchbaseError(f"checkpoint {path} is corrupt or not a torch checkpoint ({first})") from None
    if not isinstance(state, dict):
        raise BenchbaseError(f"checkpoint {path} holds no state dict")
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, loaded with ``weights_only=True``.

    Accepts a plain state dict or one nested under ``model``, ``state_dict`` or ``student``.
    """
    return _unwrap(_read(path))


def _unwrap(state: dict) -> dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "student"):
        if isinstance(state.get(key), dict):
            state = state[key]
    return state


def block_heads(model: nn.Module) -> list[int] | None:
    """The attention head count of each block of a ViT (None for other models)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(getattr(b, "attn", None), "num_heads") for b in blocks):
        return None
    return [b.attn.num_heads for b in blocks]


def set_block_heads(model: nn.Module, heads: list[int]) -> None:
    """Split each block's attention into ``heads[i]`` heads (no parameter changes)."""
    if len(heads) != len(model.blocks):
        raise BenchbaseError(f"checkpoint lists {len(heads)} blocks' head counts, the model has {len(model.blocks)}")
    for block, count in zip(model.blocks, heads):
        attn = block.attn
        if attn.num_heads == count:  # nothing to split (SAM's Attention has no head_dim to rescale)
            continue
        width = attn.num_heads * attn.head_dim
        if width % count:
            raise BenchbaseError(f"a block of width {width} cannot be split into {count} heads")
        attn.num_heads, attn.head_dim = count, width // count
        attn.scale = attn.head_dim ** -0.5


def load_weights(model: nn.Module, path: str | Path, what: str = "model") -> None:
    """Load ``path`` into ``model``; a checkpoint for another architecture names the bad keys.

    A checkpoint written by :func:`save_weights` also restores each block's head count.
    """
    raw = _read(path)  # read once: the tensors and, if saved by save_weights, the head counts
    load_state(model, _unwrap(raw), path, what)
    if isinstance(raw.get(HEADS_KEY), list):
        set_block_heads(model, raw[HEADS_KEY])


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str = "model",
               optional: tuple[str, ...] = ()) -> None:
    """Load the tensors ``state`` (read from ``path``) into ``model``; keys it lacks (other than
    ``optional`` ones, which keep their initial values), keys the model lacks and tensors of another
    shape are a one-line error naming them."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state) - set(optional))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise BenchbaseError(
            f"checkpoint {path} does not fit this {what}'s architecture ({'; '.join(parts)}); "
            "use a checkpoint of the configured model or change the model config"
        )
    model.load_state_dict(state, strict=not optional)


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write ``{"model": state dict, "block_heads": [...]}`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    payload: dict = {"model": model.state_dict()}
    heads = block_heads(model)
    if heads is not None:
        payload[HEADS_KEY] = heads
    torch.save(payload, tmp)
    tmp.replace(path)

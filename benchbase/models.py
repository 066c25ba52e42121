"""Building timm ViTs from configs, and loading checkpoints safely."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from benchbase.components import DataBundle
from benchbase.errors import BenchbaseError

_SIZE_KEYS = ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio")


def build_vit(cfg: Any, data: DataBundle, pretrained: bool = False) -> nn.Module:
    """A timm ``VisionTransformer`` for ``data``'s images, sized by ``cfg`` (a ModelConfig)."""
    sizes = {key: cfg[key] for key in _SIZE_KEYS if cfg.get(key) is not None}
    try:
        return timm.create_model(
            cfg.model,
            pretrained=pretrained,
            img_size=data.image_size,
            in_chans=data.in_chans,
            num_classes=data.num_classes,
            drop_path_rate=cfg.get("drop_path", 0.0),
            dynamic_img_size=True,  # other image sizes interpolate the position embedding
            **sizes,
        )
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise BenchbaseError(f"unknown timm model {cfg.model!r}; see timm.list_models()") from None
        raise


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, loaded with ``weights_only=True``.

    Accepts a plain state dict or one nested under ``model``, ``state_dict`` or ``student``.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchbaseError(f"checkpoint {path} does not exist; pass the path of a .pt/.pth file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchbaseError(f"checkpoint {path} is corrupt or not a torch checkpoint ({first})") from None
    for key in ("model", "state_dict", "student"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BenchbaseError(f"checkpoint {path} holds no state dict")
    return state


def load_weights(model: nn.Module, path: str | Path, what: str = "model") -> None:
    """Load ``path`` into ``model``; a checkpoint for another architecture names the bad keys."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
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
    model.load_state_dict(state)


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write ``model``'s state dict atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)

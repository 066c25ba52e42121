"""Weights that training never reached, and the frozen-feature view that stops before them.

Some methods leave part of the student without any gradient: TinyMIM's relation targets come from
the last block's attention, so that block's ``attn.proj``, ``norm2`` and MLP and the final ``norm``
never receive one and stay at their initialisation. A frozen-feature evaluation (few-shot, linear
probe, segmentation probe) that read the final tokens would read them through random weights.

:func:`untrained_parameters` names the parameters the optimiser held but never updated (AdamW keeps
state only for a parameter that has had a gradient, so this holds across a resumed run), and
:func:`frozen_view` cuts the blocks from the first one holding such a parameter: the view's final
tokens are the input of that block through the model's final norm (trained, or still at its
initial identity affine, i.e. a parameter-free LayerNorm). Evaluators that fine-tune the network
(:attr:`benchbase.components.Evaluator.reads_frozen_features` false) train those weights and see
the whole model.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable

import torch
from torch import nn

from benchbase.components import VitModel

_BLOCK = re.compile(r"^blocks\.(\d+)\.")

UNTRAINED_FILE = "untrained.json"
"""A run folder's list of the student's parameters that training never reached (absent when none),
read back with its ``student.pt`` by ``benchbase eval``."""


def untrained_parameters(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names (relative to ``model``) of the parameters ``optimizer`` holds that it never updated.

    Only meaningful after at least one optimiser step: AdamW creates a parameter's state at the
    first step where that parameter has a gradient.
    """
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return [name for name, p in model.named_parameters() if id(p) in held and p not in optimizer.state]


def first_untrained_block(untrained: Iterable[str]) -> int | None:
    """The index of the first transformer block (``blocks.<i>.``) with an untrained parameter, or None."""
    found = [int(match.group(1)) for name in untrained if (match := _BLOCK.match(name))]
    return min(found) if found else None


def frozen_view(model: VitModel, untrained: Iterable[str]) -> tuple[VitModel, str]:
    """``model`` as frozen-feature evaluations should read it, and the protocol words that say so.

    ``untrained`` are names relative to ``model.model`` (as :func:`untrained_parameters` gives them
    for the student). Without an untrained block, returns ``model`` itself and ``""``. Otherwise a
    view that shares every weight of ``model`` but runs only the blocks before the first untrained
    one, then the final norm (the captures' ``tokens``, the last block's ``attn``).
    """
    untrained = list(untrained)
    cut = first_untrained_block(untrained)
    network = model.model
    blocks = getattr(network, "blocks", None)
    if cut is None or not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or cut >= len(blocks):
        return model, ""
    view_network = copy.copy(network)  # shares every submodule; only its own module table is replaced
    view_network._modules = dict(network._modules)
    kept = [blocks[i] for i in range(cut)]
    view_network.blocks = nn.Sequential(*kept) if isinstance(blocks, nn.Sequential) else nn.ModuleList(kept)
    view = copy.copy(model)
    view._modules = dict(model._modules)
    view.model = view_network
    norm = ("the final norm, untrained (its initial identity affine: a parameter-free LayerNorm)"
            if any(name.startswith("norm.") for name in untrained) else "the trained final norm")
    cut_off = sorted(name for name in untrained if (match := _BLOCK.match(name)) and int(match.group(1)) >= cut)
    listed = ", ".join(cut_off[:4]) + (f" and {len(cut_off) - 4} more" if len(cut_off) > 4 else "")
    words = (f"frozen features read after block {cut} of {len(blocks)}, through {norm}, because training never "
             f"gave a gradient to {listed}")
    return view, words

"""What a model costs: parameters and forward FLOPs of one image, recorded with every run."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from benchbase.capture import Tap
from benchbase.components import DataBundle, Metric, VitModel


def cost_metrics(model: VitModel, data: DataBundle) -> list[Metric]:
    """``params_m`` (millions, the exported network) and ``gflops`` of the encoder's forward pass
    on one image of ``data`` (to the final token features, no task head), in the papers'
    convention (fvcore's): one multiply-accumulate counts as one FLOP, i.e. half of what
    :class:`torch.utils.flop_counter.FlopCounterMode` reports. Both are tagged ``task=cost``."""
    network = model.export()
    params = sum(p.numel() for p in network.parameters())
    device = next(network.parameters()).device
    image = torch.zeros(1, data.in_chans, data.image_size, data.image_size, device=device)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    # the math kernel of scaled_dot_product_attention runs as matmuls the counter sees (the fused
    # CPU kernel is not counted, which would leave out the attention products)
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), counter:
        model.run(image, [Tap("tokens")])
    model.train(was_training)
    size = f"{data.image_size}x{data.image_size}"
    return [
        Metric("params_m", params / 1e6, 1, "parameters of the scored network, millions", extras={"task": "cost"}),
        Metric("gflops", counter.get_total_flops() / 2e9, 1,
               f"forward GFLOPs of one {size} image to the final tokens (1 multiply-add = 1 FLOP, as fvcore and "
               "the papers count; torch.utils.flop_counter)", extras={"task": "cost"}),
    ]

"""Images/s and model-FLOPs utilisation of each installed method's training step.

Every timm-student method plugin (the suite's student.arch=vit) takes optimiser steps through the
engine's own step function on random images, teacher and student built from timm names, in bf16
on CUDA (fp32 on the CPU). FLOPs of one step are counted with ``torch.utils.flop_counter``; MFU
is reported against ``--peak-tflops``. Prints one JSON line per method.

    python benchmarks/method_throughput.py --teacher vit_base_patch16_224 --student vit_small_patch16_224 \
        --img 224 --batch 128 --steps 20          # a GPU
    python benchmarks/method_throughput.py        # a quick CPU run with tiny models
"""

from __future__ import annotations

import argparse
import inspect
import json
import time

import torch
from common import device_name, method_step, step_arguments, sync, vit_methods
from torch.utils.flop_counter import FlopCounterMode

from benchbase.plugin_manager import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(parser, steps=5, warmup=2)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--methods", default="", help="comma-separated method names (default: all vit methods)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bb = load()
    for name in vit_methods(bb, args.methods):
        step = method_step(bb, name, args, device)
        with FlopCounterMode(display=False) as counter:
            step()
        for _ in range(args.warmup):
            step()
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        rate = args.batch * args.steps / (time.perf_counter() - start)
        flops = counter.get_total_flops()
        loss_cls = bb.registry.get("methods", name)
        row = {
            "method": name, "plugin_params": {k: v.default for k, v in inspect.signature(loss_cls.__init__).parameters.items()
                                              if k != "self" and v.default is not inspect.Parameter.empty and isinstance(v.default, (int, float, str, bool))},
            "device": device_name(device), "precision": "bf16" if device.type == "cuda" else "fp32",
            "teacher": args.teacher, "student": args.student,
            "img": args.img, "batch": args.batch, "images_per_s": round(rate, 1), "step_tflop": round(flops / 1e12, 3),
        }
        if device.type == "cuda":
            row["mfu"] = round(flops * rate / args.batch / (args.peak_tflops * 1e12), 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

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
import platform
import time

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchbase.components import Student, Teacher
from benchbase.engine import _step, autocast_dtype, param_groups
from benchbase.plugins import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="vit_tiny_patch16_224")
    parser.add_argument("--student", default="vit_tiny_patch16_224")
    parser.add_argument("--img", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--methods", default="", help="comma-separated method names (default: all vit methods)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = autocast_dtype("auto", device)
    bb = load()
    names = [m for m in (args.methods.split(",") if args.methods else bb.select_methods(None))
             if getattr(bb.registry.get("losses", m), "student_arch", None) in (None, "vit")]
    images = torch.randn(args.batch, 3, args.img, args.img, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    for name in names:
        torch.manual_seed(0)
        teacher = Teacher(timm.create_model(args.teacher, img_size=args.img, num_classes=args.classes)).to(device)
        student = Student(timm.create_model(args.student, img_size=args.img, num_classes=args.classes,
                                            drop_path_rate=0.1, dynamic_img_size=True)).to(device)
        loss_cls = bb.registry.get("losses", name)
        loss = loss_cls()
        loss.setup(student, teacher if loss.uses_teacher else None)
        loss.to(device)
        optimizer = torch.optim.AdamW(param_groups([student, loss], 0.05), lr=1e-4)
        cfg = argparse.Namespace(clip_grad=3.0)

        def step() -> None:
            _step(student, teacher if loss.uses_teacher else None, loss, optimizer, images, labels, device, amp,
                  cfg, 0, 1e-4)
            loss.after_step(student, 0.5)

        with FlopCounterMode(display=False) as counter:
            step()
        for _ in range(args.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = args.batch * args.steps / (time.perf_counter() - start)
        flops = counter.get_total_flops()
        row = {
            "method": name, "plugin_params": {k: v.default for k, v in inspect.signature(loss_cls.__init__).parameters.items()
                                              if k != "self" and v.default is not inspect.Parameter.empty and isinstance(v.default, (int, float, str, bool))},
            "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu {platform.machine()} ({torch.get_num_threads()} threads)",
            "precision": "bf16" if amp else "fp32", "teacher": args.teacher, "student": args.student,
            "img": args.img, "batch": args.batch, "images_per_s": round(rate, 1), "step_tflop": round(flops / 1e12, 3),
        }
        if device.type == "cuda":
            row["mfu"] = round(flops * rate / args.batch / (args.peak_tflops * 1e12), 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""What the benchmarks share: the machine's name, interleaved timing with medians, and one method's step."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import timm
import torch

from benchbase.components import Student, Teacher
from benchbase.engine import StepModule, autocast_dtype, param_groups, train_step
from benchbase.plugin_manager import Benchbase


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's architecture and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.machine()} ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                        warmup: int = 1) -> dict[str, float]:
    """Median seconds of each of ``fns``, timed in turns (a, b, c, a, b, c, ... with the order rotated
    each round) so that load from other processes and clock changes hit every candidate alike."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def vit_methods(bb: Benchbase, chosen: str = "") -> list[str]:
    """The chosen (comma-separated) or all installed methods that distil timm ViT students."""
    names = chosen.split(",") if chosen else bb.select_methods(None)
    return [m for m in names if getattr(bb.registry.get("methods", m), "student_arch", None) in (None, "vit")]


def method_step(bb: Benchbase, name: str, args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    """One training step of method ``name`` through the engine's step function, on a fixed batch of
    random images: ``args.teacher``/``args.student`` timm models at ``args.img`` px, ``args.batch``
    images, ``args.classes`` classes; bf16 autocast on CUDA, fp32 on the CPU; AdamW, clipping at 3."""
    amp = autocast_dtype("auto", device)
    torch.manual_seed(0)
    teacher = Teacher(timm.create_model(args.teacher, img_size=args.img, num_classes=args.classes)).to(device)
    student = Student(timm.create_model(args.student, img_size=args.img, num_classes=args.classes,
                                        drop_path_rate=0.1, dynamic_img_size=True)).to(device)
    loss = bb.registry.get("methods", name)()
    loss.setup(student, teacher if loss.uses_teacher else None)
    loss.to(device)
    optimizer = torch.optim.AdamW(param_groups([student, loss], 0.05), lr=1e-4)
    module, cfg = StepModule(student, loss), argparse.Namespace(clip_grad=3.0)
    images = torch.randn(args.batch, 3, args.img, args.img, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)

    def step() -> None:
        train_step(module, teacher if loss.uses_teacher else None, loss, optimizer, images, labels, device, amp, cfg, 0, 1e-4)
        loss.after_step(student, 0.5)

    return step

"""What the benchmarks share: the machine's name, interleaved timing with medians, and one method's step."""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import timm
import torch
from omegaconf import DictConfig, OmegaConf

from benchbase.components import Student, Teacher
from benchbase.engine import StepModule, autocast_dtype, compiled, make_optimizer, train_step
from benchbase.methods import Methods
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


def step_arguments(parser: argparse.ArgumentParser, steps: int, warmup: int) -> None:
    """The options of a benchmark that times training steps of a teacher/student pair: the timm
    models, image size, batch, timed and warm-up steps, and the dense bf16 peak MFU is taken against."""
    parser.add_argument("--teacher", default="vit_tiny_patch16_224")
    parser.add_argument("--student", default="vit_tiny_patch16_224")
    parser.add_argument("--img", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")


def vit_methods(bb: Benchbase, chosen: str = "") -> list[str]:
    """The chosen (comma-separated) or all installed methods that distil timm ViT students."""
    names = chosen.split(",") if chosen else bb.select_methods(None)
    return [m for m in names if getattr(bb.registry.get("methods", m), "student_arch", None) in (None, "vit")]


def method_trainer(bb: Benchbase, name: str) -> DictConfig:
    """The trainer method ``name`` trains with by its protocol (``method/<name>.yaml``'s ``trainer``
    over the default trainer): its betas, weight decay and gradient clipping."""
    return Methods(bb, []).config(name).trainer


def method_step(bb: Benchbase, name: str, args: argparse.Namespace, device: torch.device) -> Callable[[], None]:
    """One training step of method ``name`` through the engine's step function, on a fixed batch of
    random images: ``args.teacher``/``args.student`` timm models at ``args.img`` px, ``args.batch``
    images, ``args.classes`` classes; bf16 autocast on CUDA, fp32 on the CPU; the engine's optimizer
    (AdamW, fused on CUDA) with the method's protocol trainer (betas, weight decay, clipping); with
    ``args.compile`` (optional) the engine compiles the blocks no tap reads, as ``trainer.compile``
    does, for the rest of the process."""
    amp = autocast_dtype("auto", device)
    torch.manual_seed(0)
    teacher = Teacher(timm.create_model(args.teacher, img_size=args.img, num_classes=args.classes)).to(device)
    student = Student(timm.create_model(args.student, img_size=args.img, num_classes=args.classes,
                                        drop_path_rate=0.1, dynamic_img_size=True)).to(device)
    loss = bb.registry.get("methods", name)()
    loss.setup(student, teacher if loss.uses_teacher else None)
    loss.to(device)
    cfg = OmegaConf.merge(method_trainer(bb, name), {"compile": bool(getattr(args, "compile", False))})
    optimizer = make_optimizer([student, loss], cfg, 1e-4, device)
    module = StepModule(student, loss)
    images = torch.randn(args.batch, 3, args.img, args.img, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    compiling = compiled([(student, loss.student_taps), (teacher, loss.teacher_taps)], cfg)
    compiling.__enter__()  # compiled for as long as ``step`` holds the context (its exit restores eager)

    def step() -> None:
        train_step(module, teacher if loss.uses_teacher else None, loss, optimizer, images, labels, device, amp, cfg,
                   0, 1e-4, weight_decay=cfg.weight_decay)
        loss.after_step(student, 0.5)

    step.compiling = compiling  # type: ignore[attr-defined]
    return step

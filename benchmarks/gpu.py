"""What a lent GPU is for, in one command: every method's training step at its paper's setting, measured.

For every installed method that distils timm ViTs (default: ViT-B/16 teacher, ViT-S/16 student,
224 px, bf16 autocast on CUDA), at the largest batch of ``--batches`` that fits:

- images/s, eager and compiled (the engine's ``trainer.compile``: every block no tap reads), and
  the compile time;
- model-FLOPs utilisation (MFU): the step's FLOPs (``torch.utils.flop_counter``) x steps/s against
  ``--peak-tflops`` (the datasheet's dense bf16 peak) and against the bf16 matmul rate measured here
  (an 8192^3 product on random data, median of 10);
- peak memory (``torch.cuda.max_memory_allocated`` over the timed steps, models and optimizer
  state included);
- where the eager step's time goes (``torch.profiler``, ``--profile`` methods): device kernels
  grouped into matmul, attention, optimizer, elementwise (norms, softmax, activations and the dtype
  casts and copies that run as elementwise kernels), other data movement and
  other, their sum against the step's wall time (the rest: the device waiting on the host);
- TinyMIM through benchbase against a hand-written loop (``step_overhead.compare``).

Times are the median over ``--repeats`` blocks of ``--steps`` steps (device synchronised around
each block, as the engine's loop waits only every ``trainer.sync_every`` steps). Each result is one
JSON line in ``--out``/gpu.jsonl as soon as it is measured; a table ends the output. ``--budget-s``
skips what would not finish in time (said in the output), so a lease is never spent on nothing.

    python benchmarks/gpu.py --out /tmp/gpu                       # a GPU (about 6 minutes on an H200)
    python benchmarks/gpu.py --out /tmp/gpu --teacher vit_tiny_patch16_224 --student vit_tiny_patch16_224 \\
        --img 32 --batches 8 --steps 1 --repeats 1 --profile tinymim   # a CPU check of the script itself
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from common import device_name, method_step, sync, vit_methods
from step_overhead import compare
from torch.utils.flop_counter import FlopCounterMode

from benchbase.plugin_manager import load

GIB = 1 << 30
KERNEL_GROUPS = (  # (group, substrings of a kernel's lower-cased name), first match wins
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn_mha")),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
    ("matmul", ("gemm", "matmul", "cutlass", "xmma", "nvjet", "sm90", "cublas", "mm_", "addmm", "bmm")),
    ("elementwise: norms, softmax, activations, casts", ("norm", "softmax", "elementwise", "gelu", "reduce", "triton", "mul", "add",
                                  "div", "exp", "log", "where", "fill", "vectorized", "unrolled")),
    ("data movement", ("memcpy", "memset", "copy", "cat", "index", "gather", "scatter", "transpose", "permute")),
)


def matmul_tflops(device: torch.device) -> float | None:
    """The bf16 matrix rate measured here: an 8192^3 product of random matrices, median of 10."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * 8192 ** 3 / statistics.median(times) / 1e12


def time_step(step, args: argparse.Namespace, device: torch.device) -> float:
    """Median seconds per step over ``args.repeats`` blocks of ``args.steps`` steps (after warm-up)."""
    for _ in range(args.warmup):
        step()
    blocks = []
    for _ in range(args.repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        blocks.append((time.perf_counter() - start) / args.steps)
    return statistics.median(blocks)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def fitting_step(bb, name: str, args: argparse.Namespace, device: torch.device):
    """(batch, step) at the largest of ``args.batches`` whose step runs without running out of memory."""
    for batch in sorted(args.batches, reverse=True):
        free(device)
        try:
            step = method_step(bb, name, argparse.Namespace(**{**vars(args), "batch": batch, "compile": False}), device)
            step()
            sync(device)
            return batch, step
        except torch.OutOfMemoryError:
            step = None
            free(device)
    raise RuntimeError(f"{name}: no batch of {args.batches} fits")


def step_flops(step) -> int:
    """FLOPs of one (eager) step, counted by ``torch.utils.flop_counter``."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def measure(name: str, batch: int, step, flops: int, args, device, peak_measured: float | None, mode: str) -> dict:
    """One method's row in ``mode`` (eager | compiled): images/s, MFU (of ``flops`` a step), peak memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = time_step(step, args, device)
    row = {"method": name, "mode": mode, "batch": batch, "images_per_s": round(batch / seconds, 1),
           "step_ms": round(seconds * 1e3, 2), "step_tflop": round(flops / 1e12, 4)}
    if device.type == "cuda":
        row["mfu_datasheet"] = round(flops / seconds / (args.peak_tflops * 1e12), 4)
        if peak_measured:
            row["mfu_measured_peak"] = round(flops / seconds / (peak_measured * 1e12), 4)
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
    return row


def kernel_group(name: str) -> str:
    lowered = name.lower()
    for group, keys in KERNEL_GROUPS:
        if any(key in lowered for key in keys):
            return group
    return "other"


def profile(step, args: argparse.Namespace, device: torch.device) -> dict:
    """Where ``args.steps`` eager steps spend their time: kernel time per group, and the wall time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with torch_profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        wall = time.perf_counter() - start
    groups: dict[str, float] = defaultdict(float)
    kernels: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if device.type == "cuda" and event.device_type == torch.autograd.DeviceType.CUDA:
            groups[kernel_group(event.name)] += event.device_time / 1e6
            kernels[event.name] += event.device_time / 1e6
    busy = sum(groups.values())
    return {"wall_s_per_step": round(wall / args.steps, 5), "kernel_s_per_step": round(busy / args.steps, 5),
            "device_idle_fraction": round(1 - busy / wall, 3) if wall else None,
            "groups_fraction_of_kernel_time": {g: round(t / busy, 3) for g, t in sorted(groups.items(), key=lambda kv: -kv[1])} if busy else {},
            "top_kernels_ms_per_step": {k[:90]: round(t / args.steps * 1e3, 3) for k, t in
                                        sorted(kernels.items(), key=lambda kv: -kv[1])[:12]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.jsonl")
    parser.add_argument("--teacher", default="vit_base_patch16_224")
    parser.add_argument("--student", default="vit_small_patch16_224")
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batches", type=int, nargs="+", default=[512, 256, 128], help="tried largest first")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="datasheet dense bf16 (H100/H200 SXM: 989)")
    parser.add_argument("--methods", default="", help="comma-separated (default: every installed ViT method)")
    parser.add_argument("--profile", default="tinymim,smkd", help="methods whose eager step is profiled")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip what would start after this")
    args = parser.parse_args()
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    bb = load()
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        with (args.out / "gpu.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    def in_budget(what: str) -> bool:
        if time.perf_counter() - started < args.budget_s:
            return True
        emit({"skipped": what, "reason": f"--budget-s {args.budget_s:.0f} spent"})
        return False

    peak = matmul_tflops(device)
    emit({"device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
          "teacher": args.teacher, "student": args.student, "img": args.img,
          "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
          "matmul_bf16_tflops_measured": round(peak, 1) if peak else None, "peak_tflops_datasheet": args.peak_tflops,
          "argv": " ".join(sys.argv)})
    methods = vit_methods(bb, args.methods)
    chosen: dict[str, int] = {}
    flops: dict[str, int] = {}
    for name in methods:  # eager first: every method measured before any compile time is spent
        if not in_budget(f"{name} eager"):
            continue
        batch, step = fitting_step(bb, name, args, device)
        chosen[name], flops[name] = batch, step_flops(step)  # compiled steps compute the same FLOPs
        emit(measure(name, batch, step, flops[name], args, device, peak, "eager"))
        if name in args.profile.split(","):
            emit({"method": name, "mode": "eager", "batch": batch, "profile": profile(step, args, device)})
        del step
        free(device)
    if in_budget("tinymim harness vs hand-written loop") and "tinymim" in chosen:
        emit({"tinymim_harness_vs_hand_loop": compare(argparse.Namespace(
            teacher=args.teacher, student=args.student, img=args.img, batch=chosen["tinymim"],
            steps=args.steps, warmup=args.warmup, peak_tflops=args.peak_tflops), device)})
        free(device)
    order = sorted(chosen, key=lambda n: (n not in ("tinymim", "smkd"), n))  # the two first
    for name in [] if args.no_compile else order:
        if not in_budget(f"{name} compiled"):
            continue
        torch._dynamo.reset()
        begin = time.perf_counter()
        step = method_step(bb, name, argparse.Namespace(**{**vars(args), "batch": chosen[name], "compile": True}),
                           device)
        step()
        sync(device)
        compile_s = time.perf_counter() - begin
        row = measure(name, chosen[name], step, flops[name], args, device, peak, "compiled")
        row["first_step_s"] = round(compile_s, 1)
        row["dynamo"] = {k: v for k, v in torch._dynamo.utils.counters["stats"].items()}  # graphs, recompiles
        emit(row)
        del step
        free(device)
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    from tabulate import tabulate

    table = [[r["method"], r["mode"], r["batch"], r["images_per_s"], r.get("mfu_datasheet"), r.get("mfu_measured_peak"),
              r.get("peak_memory_gib"), r["step_ms"], r.get("first_step_s")]
             for r in rows if "images_per_s" in r]
    print(tabulate(table, headers=["method", "mode", "batch", "img/s", "MFU (datasheet)", "MFU (measured peak)",
                                   "peak GiB", "step ms", "first step s"]))


if __name__ == "__main__":
    main()

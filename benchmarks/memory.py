"""Peak memory of one training step of each installed method, at a stated batch and image size.

CUDA: ``torch.cuda.max_memory_allocated`` during two steps minus the memory allocated before them
(models, optimizer state and one finished warm-up step in place): what a step adds at its peak
(activations, gradients, temporaries).

CPU: the same difference in resident memory, each method in a fresh process: after a warm-up step
(AdamW's state exists) the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``, Linux >= 4.0),
and the step's peak is ``VmHWM`` after two steps minus ``VmRSS`` before them. glibc's malloc is told
to map every block of 64 KiB or more on its own (``MALLOC_MMAP_THRESHOLD_``), so freed tensors leave
the resident set instead of staying cached in the heap; small allocations and thread stacks remain,
so CPU figures are an upper bound by a few MiB.

    python benchmarks/memory.py --teacher vit_base_patch16_224 --student vit_small_patch16_224 --batch 128  # a GPU
    python benchmarks/memory.py                                                                            # the CPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from common import device_name, method_step, vit_methods

from benchbase.plugin_manager import load

MIB = 1 << 20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Peak MiB one step of ``name`` adds, in this process (see the module docstring)."""
    step = method_step(load(), name, args, device)
    step()  # warm-up: optimizer state, autograd and allocator set up
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(), step()
        torch.cuda.synchronize()
        return {"peak_step_mib": round((torch.cuda.max_memory_allocated() - before) / MIB, 1),
                "resident_mib": round(before / MIB, 1), "how": "torch.cuda.max_memory_allocated - allocated before"}
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    before = _status_kib("VmRSS")
    step(), step()
    return {"peak_step_mib": round((_status_kib("VmHWM") - before) / 1024, 1), "resident_mib": round(before / 1024, 1),
            "how": "VmHWM - VmRSS (peak RSS mark reset after a warm-up step), fresh process, MALLOC_MMAP_THRESHOLD_=65536"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="vit_small_patch16_224")
    parser.add_argument("--student", default="vit_tiny_patch16_224")
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--methods", default="", help="comma-separated method names (default: all vit methods)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # measure this method in this process
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.one:
        print(json.dumps(measure(args.one, args, device)))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    for name in vit_methods(load(), args.methods):
        one = [sys.executable, __file__, "--one", name, *(f"--{k}={getattr(args, k)}" for k in
                                                           ("teacher", "student", "img", "batch", "classes"))]
        out = subprocess.run(one, env=env, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        print(json.dumps({"method": name, "date": datetime.date.today().isoformat(), "device": device_name(device),
                          "precision": "bf16" if device.type == "cuda" else "fp32", "teacher": args.teacher,
                          "student": args.student, "img": args.img, "batch": args.batch, **json.loads(out)}), flush=True)


if __name__ == "__main__":
    main()

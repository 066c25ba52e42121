"""Capture cost and the teacher's early exit, timed through benchbase's capture (``VitModel.run``).

Capture: a loss that needs one block's attention map gets it computed from that block's captured
q/k; every other block keeps its fused attention (``scaled_dot_product_attention``). Timed: a
forward (inference mode) and a forward + backward of the model with ``tokens`` only, with ``tokens``
plus block ``--block``'s attention map, and, for contrast, with timm's fused attention switched off
in every block (what capturing maps by patching all blocks costs). ``attn_map_alone`` is the cost
of computing that one [B, H, T, T] map from q/k by itself: capture should add about that, no more.

Early exit: a teacher forward asked only for block k's output runs blocks 0..k; its time against
the full depth should follow (k + 1) / depth.

Prints one JSON line. Timings are medians of interleaved repeats (see ``common.interleaved_medians``).

    python benchmarks/capture_cost.py --model vit_base_patch16_224 --img 224 --batch 64   # a GPU
    python benchmarks/capture_cost.py                                                     # the CPU
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json

import timm
import torch
from common import device_name, interleaved_medians

from benchbase.capture import Tap
from benchbase.components import Student, Teacher
from benchbase.engine import autocast_dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--img", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=6, help="the block whose attention map the loss needs")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = autocast_dtype("auto", device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, img_size=args.img, num_classes=0).to(device)
    unfused = timm.create_model(args.model, img_size=args.img, num_classes=0).to(device)
    unfused.load_state_dict(model.state_dict())
    for block in unfused.blocks:
        block.attn.fused_attn = False
    student, student_unfused = Student(model), Student(unfused)
    teacher = Teacher(copy.deepcopy(model))  # frozen: its own copy
    images = torch.randn(args.batch, 3, args.img, args.img, device=device)
    tokens, attn = Tap("tokens"), Tap("attn", args.block)
    depth = len(model.blocks)

    def autocast():
        return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def forward(who, taps):
        def run():
            with torch.inference_mode(), autocast():
                who.run(images, taps)
        return run

    def train_step(who, taps):
        def run():
            with autocast():
                out = who.run(images, taps)
                total = sum(t.float().mean() for t in out.values())
            total.backward()
            who.zero_grad(set_to_none=True)
        return run

    with torch.inference_mode(), autocast():
        qk = teacher.run(images, [Tap("q", args.block), Tap("k", args.block)])
    q, k = qk[Tap("q", args.block)], qk[Tap("k", args.block)]
    scale = q.shape[-1] ** -0.5

    def attn_map_alone():
        with torch.inference_mode(), autocast():
            ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)

    fwd = interleaved_medians({
        "no_capture": forward(student, [tokens]), "capture_one_map": forward(student, [tokens, attn]),
        "unfused_all_blocks": forward(student_unfused, [tokens, attn]), "attn_map_alone": attn_map_alone,
    }, args.repeats, device)
    bwd = interleaved_medians({
        "no_capture": train_step(student, [tokens]), "capture_one_map": train_step(student, [tokens, attn]),
        "unfused_all_blocks": train_step(student_unfused, [tokens, attn]),
    }, args.repeats, device)
    exits = [b for b in sorted({depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1}) if b >= 0]
    early = interleaved_medians({f"block_{b}": forward(teacher, [Tap("block", b)]) for b in exits}
                                | {"full_depth": forward(teacher, [tokens])}, args.repeats, device)
    ms = lambda seconds: round(seconds * 1e3, 2)
    print(json.dumps({
        "date": datetime.date.today().isoformat(), "device": device_name(device), "precision": "bf16" if amp else "fp32",
        "model": args.model, "img": args.img, "batch": args.batch, "block": args.block, "repeats": args.repeats,
        "forward_ms": {k: ms(v) for k, v in fwd.items()},
        "forward_backward_ms": {k: ms(v) for k, v in bwd.items()},
        "capture_extra_forward_ms": ms(fwd["capture_one_map"] - fwd["no_capture"]),
        "early_exit_ms": {k: ms(v) for k, v in early.items()},
        "early_exit_fraction": {k: round(v / early["full_depth"], 3) for k, v in early.items() if k != "full_depth"},
        "early_exit_expected": {f"block_{b}": round((b + 1) / depth, 3) for b in exits},
    }))


if __name__ == "__main__":
    main()

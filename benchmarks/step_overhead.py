"""Harness overhead: one TinyMIM distillation step through benchbase vs a hand-written PyTorch step.

Both paths run the same computation on the same models and batch: teacher forward (inference mode)
up to its last block's q/k/v, student forward up to its (head-aligned) last block's q/k/v, the
Q-K and V-V relation KL, backward, gradient clipping and an AdamW step. The benchbase path goes
through the engine's step (capture hooks, ``Loss.make_inputs``/``forward``, loss-term logging);
the manual path calls the timm modules directly. Steps alternate between the two paths so drift
(clocks, thermals, other processes) hits both equally; images/s come from the median step time.
Prints one JSON line with images/s of both, their ratio, the model FLOPs of a step and, on CUDA,
the model-FLOPs utilisation against ``--peak-tflops``.

    python benchmarks/step_overhead.py --teacher vit_base_patch16_224 --student vit_small_patch16_224 \
        --img 224 --batch 128 --steps 30            # a GPU, bf16
    python benchmarks/step_overhead.py              # a quick CPU run with tiny models
"""

from __future__ import annotations

import argparse
import datetime
import json

import timm
import torch
import torch.nn.functional as F
from benchbase_plugins.tinymim import TinyMIMLoss
from common import device_name, interleaved_medians, step_arguments
from torch.utils.flop_counter import FlopCounterMode

from benchbase.components import Student, Teacher
from benchbase.engine import StepModule, autocast_dtype, make_optimizer, train_step


def last_qkv(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v [B, H, T, d] of the last block, by hand (no hooks, no benchbase)."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    for block in model.blocks[:-1]:
        x = block(x)
    attn = model.blocks[-1].attn
    h = model.blocks[-1].norm1(x)
    B, T, _ = h.shape
    q, k, v = attn.qkv(h).reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    return q, k, v


def kl_rows(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    scale = s.shape[-1] ** -0.5
    return F.kl_div(F.log_softmax(s * scale, -1), F.softmax(t * scale, -1), reduction="none").sum(-1).mean()


def manual_step(student, teacher, optimizer, images, amp, clip):
    with torch.autocast(images.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        with torch.inference_mode():
            tq, tk, tv = last_qkv(teacher, images)
        tq, tk, tv = tq.clone(), tk.clone(), tv.clone()
        sq, sk, sv = last_qkv(student, images)
        loss = kl_rows(sq @ sk.transpose(-2, -1), tq @ tk.transpose(-2, -1)) + kl_rows(
            sv @ sv.transpose(-2, -1), tv @ tv.transpose(-2, -1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip)
    optimizer.step()
    return loss.detach()  # no host sync: the harness step has none either


def compare(args: argparse.Namespace, device: torch.device) -> dict:
    """The harness's TinyMIM step against the hand-written one (module docstring), as one dict."""
    amp = autocast_dtype("auto", device)
    torch.manual_seed(0)
    teacher = Teacher(timm.create_model(args.teacher, img_size=args.img, num_classes=0)).to(device)
    student = Student(timm.create_model(args.student, img_size=args.img, num_classes=0, drop_path_rate=0.1)).to(device)
    loss = TinyMIMLoss(color_jitter=0.0)
    loss.setup(student, teacher)  # head alignment: the student's last block gets the teacher's heads
    cfg = argparse.Namespace(clip_grad=3.0, weight_decay=0.05, betas=(0.9, 0.999))
    optimizer = make_optimizer([student, loss], cfg, 1e-4, device)  # both paths share it: fused on CUDA
    images = torch.randn(args.batch, 3, args.img, args.img, device=device)
    labels = torch.zeros(args.batch, dtype=torch.long, device=device)

    step_module = StepModule(student, loss)

    def harness():
        return train_step(step_module, teacher, loss, optimizer, images, labels, device, amp, cfg, 0, 1e-4)

    def manual():
        return manual_step(student.model, teacher.model, optimizer, images, amp, 3.0)

    with FlopCounterMode(display=False) as counter:
        harness()
    flops = counter.get_total_flops()
    timings = interleaved_medians({"benchbase": harness, "manual": manual}, args.steps, device, args.warmup)
    rate = {k: args.batch / v for k, v in timings.items()}
    result = {
        "date": datetime.date.today().isoformat(), "device": device_name(device),
        "precision": "bf16" if amp else "fp32", "teacher": args.teacher, "student": args.student, "img": args.img,
        "batch": args.batch, "steps": args.steps, "images_per_s_benchbase": round(rate["benchbase"], 1),
        "images_per_s_manual": round(rate["manual"], 1), "overhead_ratio": round(timings["benchbase"] / timings["manual"], 3),
        "step_tflop": round(flops / 1e12, 3),
    }
    if device.type == "cuda":
        result["mfu_benchbase"] = round(flops * rate["benchbase"] / args.batch / (args.peak_tflops * 1e12), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step_arguments(parser, steps=10, warmup=3)
    args = parser.parse_args()
    print(json.dumps(compare(args, torch.device("cuda" if torch.cuda.is_available() else "cpu"))))


if __name__ == "__main__":
    main()

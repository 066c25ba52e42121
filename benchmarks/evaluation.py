"""Evaluation speed: few-shot episodes on precomputed features, and mIoU accumulation over a split.

Few-shot: ``--episodes`` 5-way episodes (1 and 5 shots, 15 queries) on random [n, F] features of
``--classes`` classes. The episodes are drawn once by
:func:`~benchbase.evaluation.fewshot.sample_episodes` (timed on its own), then scored by
:func:`~benchbase.evaluation.fewshot.prototype_accuracy` (on a CPU its fused kernel, elsewhere the
batched tensor programs; ``path`` says which) and by a per-episode Python loop doing the
same (class means of the support features, cosine of every query to each, argmax) on the same
episodes; the per-episode accuracies of both are compared (``differing_episodes``: float32 rounding
can break a near-tie between two classes either way; such episodes are scored again in float64 to
show which side it agrees with). The time the
arithmetic needs is the scoring's multiply-adds (E·N·Q·N·F for the query-to-class cosines, E·N·K·F
for the class sums, E·N·F + n·F for the norms) at the rate of a large matrix product
([4096, F] x [F, 4096]) measured in the same run. The time to read the queries' features
(``read_queries``: one ``F.embedding_bag`` summing each episode's query rows, E·N·Q random rows of F
values, no products) is the least any scorer that gathers them needs on the machine's memory.

mIoU: predictions and labels of a split (``--images`` maps of ``--size`` px, ``--seg-classes``
classes plus an ignore label) accumulated into one confusion matrix with benchbase's
:func:`~benchbase.evaluation.segmentation.confusion_matrix` (one ``bincount`` per batch, on the
device), against a per-class loop counting intersections and unions.

Prints one JSON line; timings are medians of interleaved repeats.

    OMP_NUM_THREADS=1 python benchmarks/evaluation.py --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import json

import torch
import torch.nn.functional as F
from common import device_name, interleaved_medians

from benchbase.evaluation.fewshot import prototype_accuracy, sample_episodes, uses_gram
from benchbase.evaluation.segmentation import confusion_matrix, iou_from_confusion

IGNORE = 255


def loop_accuracy(features: torch.Tensor, support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """[E] prototype accuracy of each episode, scored one episode at a time in Python."""
    normed = F.normalize(features, dim=-1)
    ways = support.shape[1]
    accuracy = torch.empty(support.shape[0])
    for e, (s, q) in enumerate(zip(support, query)):
        prototypes = F.normalize(features[s].mean(dim=1), dim=-1)  # [N, F]
        valid = q >= 0
        predicted = (normed[q.clamp(min=0)] @ prototypes.T).argmax(dim=-1)  # [N, Q]
        accuracy[e] = ((predicted == torch.arange(ways).unsqueeze(1)) & valid).sum() / valid.sum()
    return accuracy


def loop_miou(preds: torch.Tensor, targets: torch.Tensor, classes: int) -> float:
    """mIoU by counting each class's intersection and union over the split, one class at a time."""
    inter, union = torch.zeros(classes, dtype=torch.float64), torch.zeros(classes, dtype=torch.float64)
    for pred, target in zip(preds, targets):
        labelled = target != IGNORE
        for c in range(classes):
            p, t = (pred == c) & labelled, target == c
            inter[c] += int((p & t).sum())
            union[c] += int((p | t).sum())
    return float((inter / union).nanmean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=20, help="few-shot test classes (miniImageNet: 20)")
    parser.add_argument("--per-class", type=int, default=600, help="images per class (miniImageNet: 600)")
    parser.add_argument("--dim", type=int, default=384, help="feature width (ViT-S: 384)")
    parser.add_argument("--images", type=int, default=200, help="segmentation maps in the split")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seg-classes", type=int, default=150, help="ADE20K: 150")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(args.classes).repeat_interleave(args.per_class)
    centres = torch.randn(args.classes, args.dim, generator=gen)
    features = (centres[labels] + 8.0 * torch.randn(len(labels), args.dim, generator=gen)).to(device)
    ways, queries, shots_list = 5, 15, (1, 5)
    episodes = {shots: sample_episodes(labels, ways, shots, queries, args.episodes, torch.Generator().manual_seed(1))
                for shots in shots_list}
    accuracy: dict[str, torch.Tensor] = {}

    def sample(shots: int):
        return lambda: sample_episodes(labels, ways, shots, queries, args.episodes, torch.Generator().manual_seed(1))

    def read_queries(shots: int):
        index = episodes[shots][1].flatten(1).clamp(min=0).to(device)  # [E, N·Q]
        return lambda: F.embedding_bag(index, features, mode="sum")

    def score(fn, key: str, shots: int):
        def run():
            accuracy[key] = fn(features, *episodes[shots]).cpu()
        return run

    side = 4096
    left, right = torch.randn(side, args.dim, device=device), torch.randn(args.dim, side, device=device)
    candidates = {"matmul": lambda: left @ right}
    for shots in shots_list:
        candidates[f"sample_{shots}shot"] = sample(shots)
        candidates[f"benchbase_{shots}shot"] = score(prototype_accuracy, f"benchbase_{shots}shot", shots)
        candidates[f"loop_{shots}shot"] = score(loop_accuracy, f"loop_{shots}shot", shots)
        candidates[f"read_queries_{shots}shot"] = read_queries(shots)
    fewshot = interleaved_medians(candidates, args.repeats, device, warmup=0)
    rate = side * side * args.dim / fewshot["matmul"]  # multiply-adds per second
    report = {}
    for shots in shots_list:
        count = args.episodes * ways
        adds = count * queries * ways * args.dim + count * (shots + 1) * args.dim + len(labels) * args.dim
        arithmetic = adds / rate
        bench, loop = accuracy[f"benchbase_{shots}shot"], accuracy[f"loop_{shots}shot"]
        differ = (bench != loop).nonzero().flatten()  # rounding of near-ties: which side float64 agrees with
        exact = loop_accuracy(features.double(), episodes[shots][0][differ], episodes[shots][1][differ])
        report[f"{shots}shot"] = {
            "path": "cpu kernel" if device.type == "cpu" else (
                "gram" if uses_gram(len(labels), args.dim, args.episodes, ways, shots, queries) else "direct"),
            "speedup_over_loop": round(fewshot[f"loop_{shots}shot"] / fewshot[f"benchbase_{shots}shot"], 1),
            "arithmetic_s": round(arithmetic, 4),
            "times_arithmetic": round(fewshot[f"benchbase_{shots}shot"] / arithmetic, 2),
            "times_read_queries": round(fewshot[f"benchbase_{shots}shot"] / fewshot[f"read_queries_{shots}shot"], 2),
            "mean_accuracy": {"benchbase": round(float(bench.mean()), 6), "loop": round(float(loop.mean()), 6)},
            "differing_episodes": len(differ),
            "of_which_float64_agrees_with": {"benchbase": int(torch.isclose(bench[differ], exact).sum()),
                                             "loop": int(torch.isclose(loop[differ], exact).sum())},
        }
    preds = torch.randint(0, args.seg_classes, (args.images, args.size, args.size), generator=gen).to(device)
    targets = torch.randint(0, args.seg_classes, (args.images, args.size, args.size), generator=gen)
    targets[torch.rand(targets.shape, generator=gen) < 0.1] = IGNORE
    targets = targets.to(device)
    miou: dict[str, float] = {}

    def accumulate(batch: int = 16):
        cm = torch.zeros(args.seg_classes, args.seg_classes, dtype=torch.long, device=device)
        for start in range(0, args.images, batch):
            cm += confusion_matrix(preds[start:start + batch], targets[start:start + batch], args.seg_classes, IGNORE)
        miou["benchbase"] = iou_from_confusion(cm.cpu())[1]

    def per_class_loop():
        miou["loop"] = loop_miou(preds, targets, args.seg_classes)

    seg = interleaved_medians({"benchbase": accumulate, "loop": per_class_loop}, args.repeats, device, warmup=0)
    print(json.dumps({
        "date": datetime.date.today().isoformat(), "device": device_name(device), "repeats": args.repeats,
        "fewshot": {"episodes": args.episodes, "ways": ways, "queries": queries, "features": [len(labels), args.dim],
                    "seconds": {k: round(v, 4) for k, v in fewshot.items()},
                    "matmul_gmacs_per_s": round(rate / 1e9, 1), **report},
        "miou": {"images": args.images, "size": args.size, "classes": args.seg_classes,
                 "seconds": {k: round(v, 3) for k, v in seg.items()},
                 "megapixels_per_s_benchbase": round(args.images * args.size ** 2 / seg["benchbase"] / 1e6, 1),
                 "speedup": round(seg["loop"] / seg["benchbase"], 1), "miou": {k: round(v, 6) for k, v in miou.items()}},
    }))


if __name__ == "__main__":
    main()

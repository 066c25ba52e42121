"""Evaluation speed: few-shot episodes on precomputed features, and mIoU accumulation over a split.

Few-shot: ``--episodes`` 5-way episodes (1 and 5 shots, 15 queries) on random [n, F] features of
``--classes`` classes, sampled and scored by benchbase (:func:`~benchbase.evaluation.fewshot.sample_episodes`
and :func:`~benchbase.evaluation.fewshot.prototype_accuracy`, batched over episodes) against a
per-episode Python loop doing the same (draw classes, draw support/query per class, cosine to the
class means). Both draw different random episodes, so their mean accuracies agree only within
sampling error; both are printed.

mIoU: predictions and labels of a split (``--images`` maps of ``--size`` px, ``--seg-classes``
classes plus an ignore label) accumulated into one confusion matrix with benchbase's
:func:`~benchbase.evaluation.segmentation.confusion_matrix` (one ``bincount`` per batch, on the
device), against a per-class loop counting intersections and unions.

Prints one JSON line; timings are medians of interleaved repeats.

    python benchmarks/evaluation.py
"""

from __future__ import annotations

import argparse
import datetime
import json

import torch
import torch.nn.functional as F
from common import device_name, interleaved_medians

from benchbase.evaluation.fewshot import prototype_accuracy, sample_episodes
from benchbase.evaluation.segmentation import confusion_matrix, iou_from_confusion

IGNORE = 255


def loop_episodes(features: torch.Tensor, labels: torch.Tensor, ways: int, shots: int, queries: int,
                  episodes: int, generator: torch.Generator) -> float:
    """Mean prototype accuracy of ``episodes`` episodes, one at a time in Python."""
    by_class = [torch.nonzero(labels == c).flatten() for c in labels.unique()]
    normed = F.normalize(features, dim=-1)
    correct = 0.0
    for _ in range(episodes):
        chosen = torch.randperm(len(by_class), generator=generator)[:ways]
        protos, query_sets = [], []
        for c in chosen.tolist():
            members = by_class[c][torch.randperm(len(by_class[c]), generator=generator)[:shots + queries]]
            protos.append(F.normalize(features[members[:shots]].mean(0), dim=-1))
            query_sets.append(members[shots:])
        prototypes = torch.stack(protos)
        hits = 0
        for way, members in enumerate(query_sets):
            hits += int((normed[members] @ prototypes.T).argmax(dim=1).eq(way).sum())
        correct += hits / (ways * queries)
    return correct / episodes


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
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(args.classes).repeat_interleave(args.per_class)
    centres = torch.randn(args.classes, args.dim, generator=gen)
    features = (centres[labels] + 8.0 * torch.randn(len(labels), args.dim, generator=gen)).to(device)
    accuracy: dict[str, float] = {}

    def batched(shots: int):
        def run():
            support, query = sample_episodes(labels, 5, shots, 15, args.episodes, torch.Generator().manual_seed(1))
            accuracy[f"benchbase_{shots}shot"] = float(prototype_accuracy(features, support, query).mean())
        return run

    def looped(shots: int):
        def run():
            accuracy[f"loop_{shots}shot"] = loop_episodes(features, labels.to(device), 5, shots, 15, args.episodes,
                                                          torch.Generator().manual_seed(1))
        return run

    fewshot = interleaved_medians({f"{kind}_{shots}shot": fn(shots) for shots in (1, 5)
                                   for kind, fn in (("benchbase", batched), ("loop", looped))},
                                  args.repeats, device, warmup=0)
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
        "fewshot": {"episodes": args.episodes, "ways": 5, "queries": 15, "features": [len(labels), args.dim],
                    "seconds": {k: round(v, 3) for k, v in fewshot.items()},
                    "speedup": {f"{s}shot": round(fewshot[f"loop_{s}shot"] / fewshot[f"benchbase_{s}shot"], 1) for s in (1, 5)},
                    "mean_accuracy": {k: round(v, 4) for k, v in accuracy.items()}},
        "miou": {"images": args.images, "size": args.size, "classes": args.seg_classes,
                 "seconds": {k: round(v, 3) for k, v in seg.items()},
                 "megapixels_per_s_benchbase": round(args.images * args.size ** 2 / seg["benchbase"] / 1e6, 1),
                 "speedup": round(seg["loop"] / seg["benchbase"], 1), "miou": {k: round(v, 6) for k, v in miou.items()}},
    }))


if __name__ == "__main__":
    main()

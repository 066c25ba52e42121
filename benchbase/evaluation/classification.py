"""Image classification: a linear probe on frozen features and end-to-end fine-tuning (TinyMIM).

Both report top-1 (and top-5 when the dataset has at least 10 classes) accuracy in percent on the
test split, with a binomial 95% interval 1.96·sqrt(p(1-p)/n) over the n test images.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import Tensor
from torch.utils.data import DataLoader

from benchbase.components import DataBundle, Evaluator, Metric, VitModel
from benchbase.errors import BenchbaseError
from benchbase.evaluation.features import check_pooling, extract_features
from benchbase.outcomes import KEY as OUTCOMES
from benchbase.outcomes import mean_outcomes

TOP5_MIN_CLASSES = 10
"""Top-5 accuracy is reported only for datasets with at least this many classes."""


def binomial_ci95(accuracy: float, n: int) -> float:
    """Half-width of the normal-approximation 95% interval of a proportion, 1.96·sqrt(p(1-p)/n)."""
    return 1.96 * math.sqrt(accuracy * (1 - accuracy) / n)


def topk_hits(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """Whether each label is among the ``k`` highest scores.

    Args:
        scores: [n, C] class scores (column c is class c).
        labels: [n] long true classes.

    Returns:
        [n] bool.
    """
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices  # [n, k]
    return (top == labels.unsqueeze(1)).any(dim=1)


def accuracy_metrics(scores: Tensor, labels: Tensor, num_classes: int, protocol: str) -> list[Metric]:
    """``top1`` (and ``top5`` when ``num_classes`` >= 10) in percent with binomial 95% intervals,
    each image's hit kept as its outcomes (:mod:`benchbase.outcomes`).

    Args:
        scores: [n, C] class scores of the test images.
        labels: [n] long true classes.
        protocol: how the scores were produced; the metric's own definition is appended.
    """
    n = labels.numel()
    interval = f"ci95 = binomial 1.96·sqrt(p(1-p)/n) over n={n} test images"
    metrics = []
    for k in (1, 5) if num_classes >= TOP5_MIN_CLASSES else (1,):
        hits = topk_hits(scores, labels, k)
        accuracy = float(hits.float().mean())
        metrics.append(
            Metric(
                name=f"top{k}",
                value=100 * accuracy,
                n=n,
                protocol=f"{protocol}; top-{k} accuracy, {interval}",
                ci95=100 * binomial_ci95(accuracy, n),
                extras={OUTCOMES: mean_outcomes(hits.long(), 1)},
            )
        )
    return metrics


class LinearProbe(Evaluator):
    """Multinomial logistic regression on frozen, standardised features.

    Features of both splits are extracted with ``pooling``, standardised with the train split's
    mean and standard deviation, and a scikit-learn ``LogisticRegression`` (lbfgs, multinomial,
    C=1, ``max_iter`` iterations) is fitted on the train split and scored on the test split.
    """

    name = "linear_probe"

    def __init__(
        self,
        train_split: str = "train",
        test_split: str = "test",
        pooling: str = "cls",
        max_iter: int = 1000,
        batch_size: int = 256,
    ):
        check_pooling(pooling)
        self.train_split = train_split
        self.test_split = test_split
        self.pooling = pooling
        self.max_iter = max_iter
        self.batch_size = batch_size

    def evaluate(self, student: VitModel, data: DataBundle, device: torch.device) -> list[Metric]:
        train_x, train_y = extract_features(
            student, data.split(self.train_split), self.pooling, self.batch_size, device
        )
        test_x, test_y = extract_features(student, data.split(self.test_split), self.pooling, self.batch_size, device)
        if train_y.unique().numel() < 2:
            raise BenchbaseError(
                f"linear probe: train split {self.train_split!r} of dataset {data.name!r} needs at least 2 classes"
            )
        scaler = StandardScaler().fit(train_x.numpy())
        probe = LogisticRegression(max_iter=self.max_iter).fit(scaler.transform(train_x.numpy()), train_y.numpy())
        probabilities = probe.predict_proba(scaler.transform(test_x.numpy()))  # [n, classes seen in training]
        width = max(data.num_classes, int(test_y.max()) + 1, int(probe.classes_.max()) + 1)
        scores = torch.full((test_x.shape[0], width), -1.0, dtype=torch.float64)  # classes never seen: -1
        seen = torch.as_tensor(probe.classes_.astype(np.int64))
        scores[:, seen] = torch.as_tensor(probabilities, dtype=torch.float64)
        protocol = (
            f"linear probe (multinomial logistic regression, lbfgs, max_iter {self.max_iter}, on standardised "
            f"frozen {self.pooling} features), train split {self.train_split} (n={train_y.numel()}), "
            f"test split {self.test_split}"
        )
        return accuracy_metrics(scores, test_y, data.num_classes, protocol)


class FineTune(Evaluator):
    """End-to-end fine-tuning of a copy of the student (TinyMIM's downstream protocol).

    A deep copy of ``student.export()`` (of a teacher's plain model) gets a fresh classifier head
    for ``data.num_classes`` (timm's ``reset_classifier``) and is trained with cross-entropy and AdamW (``lr``,
    ``weight_decay``, cosine learning-rate decay to 0 over all steps) for ``epochs`` epochs on the
    train split with shuffled mini-batches of ``batch_size``; top-1 (and top-5) are measured on
    the test split. The student itself is left untouched; ``seed`` fixes the head's
    initialisation, the batch order and dropout without changing the global random state.
    """

    name = "finetune"
    reads_frozen_features = False  # it fine-tunes every weight of a copy of the student

    def __init__(
        self,
        train_split: str = "train",
        test_split: str = "test",
        epochs: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        batch_size: int = 64,
        seed: int = 0,
    ):
        self.train_split = train_split
        self.test_split = test_split
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.seed = seed

    def evaluate(self, student: VitModel, data: DataBundle, device: torch.device) -> list[Metric]:
        train_set, test_set = data.split(self.train_split), data.split(self.test_split)
        devices = []  # CUDA devices whose random state is forked along with the CPU's
        if device.type == "cuda":
            devices.append(torch.cuda.current_device() if device.index is None else device.index)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            model = copy.deepcopy(student.export())
            model.reset_classifier(data.num_classes)
            model.requires_grad_(True)  # a teacher's exported weights come frozen
            model.to(device).train()
            loader = DataLoader(
                train_set,
                batch_size=self.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(self.seed),
            )
            optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            steps = max(1, self.epochs * len(loader))
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
            for _ in range(self.epochs):
                for images, targets in loader:
                    loss = F.cross_entropy(model(images.to(device)), targets.to(device))
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    schedule.step()
            model.eval()
            scores, labels = [], []
            with torch.inference_mode():
                for images, targets in DataLoader(test_set, batch_size=self.batch_size, shuffle=False):
                    scores.append(model(images.to(device)).float().cpu())
                    labels.append(torch.as_tensor(targets, dtype=torch.long))
        protocol = (
            f"fine-tuning (all weights, new {data.num_classes}-class head; AdamW lr {self.lr:g}, weight decay "
            f"{self.weight_decay:g}, cosine decay, batch {self.batch_size}, {self.epochs} epochs, "
            f"seed {self.seed}), "
            f"train split {self.train_split} (n={len(train_set)}), test split {self.test_split}"
        )
        return accuracy_metrics(torch.cat(scores), torch.cat(labels), data.num_classes, protocol)

"""Image classification: a linear probe on frozen features and end-to-end fine-tuning (TinyMIM).

Both report top-1 (and top-5 when the dataset has at least 10 classes) accuracy in percent on the
test split, with a binomial 95% interval 1.96·sqrt(p(1-p)/n) over the n test images.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from timm.layers import DropPath
from torch import Tensor, nn
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


FINETUNE_RECIPES = ("plain", "mae")


def mae_finetune_model(model: nn.Module, num_classes: int, drop_path: float) -> nn.Module:
    """``model`` (a timm ViT, changed in place) as MAE's fine-tuning builds it: global average
    pooling of the patch tokens through a new ``fc_norm`` (the pre-trained final norm dropped), a
    new ``num_classes`` head initialised with std 2e-5, and drop path rising linearly over the
    blocks from 0 to ``drop_path``."""
    if not hasattr(model, "fc_norm") or not hasattr(model, "blocks"):
        raise BenchbaseError("finetune recipe=mae needs a timm VisionTransformer (global pooling with fc_norm); "
                             "use recipe=plain")
    model.reset_classifier(num_classes, global_pool="avg")
    model.fc_norm, model.norm = nn.LayerNorm(model.embed_dim), nn.Identity()
    nn.init.trunc_normal_(model.head.weight, std=2e-5)
    nn.init.zeros_(model.head.bias)
    depth = len(model.blocks)
    for index, block in enumerate(model.blocks):
        rate = drop_path * index / max(1, depth - 1)
        block.drop_path1 = block.drop_path2 = DropPath(rate) if rate > 0 else nn.Identity()
    return model


@contextlib.contextmanager
def seeded_host_rngs(seed: int) -> Iterator[None]:
    """Python's and NumPy's global random streams seeded with ``seed`` inside, restored after (timm's
    Mixup draws from NumPy, its RandomErasing from ``random``)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def posterize(image: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's RandAugment posterize, with its strongest level too: at magnitude 10 it keeps 0 bits,
    which Pillow >= 10 rejects and older Pillow (and TensorFlow's RandAugment) turned into a black
    image; that black image is what this returns."""
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return image if bits_to_keep >= 8 else ImageOps.posterize(image, bits_to_keep)


def warmup_cosine(step: int, total: int, warmup: int, peak: float, minimum: float) -> float:
    """MAE's per-iteration learning rate: linear warm-up over ``warmup`` steps, then half-cycle
    cosine from ``peak`` to ``minimum``."""
    if step < warmup:
        return peak * step / warmup
    return minimum + (peak - minimum) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class FineTune(Evaluator):
    """End-to-end fine-tuning of a copy of the student (TinyMIM's downstream protocol).

    A deep copy of ``student.export()`` (of a teacher's plain model) is trained on the train split
    and scored by top-1 (and top-5) on the test split. The student itself is left untouched;
    ``seed`` fixes the head's initialisation, the batch order, augmentation and dropout without
    changing the global random state.

    ``recipe="plain"``: a fresh head (timm's ``reset_classifier``), cross-entropy, AdamW (``lr``,
    ``weight_decay``), cosine decay to 0 over all steps, ``epochs`` epochs of shuffled batches.

    ``recipe="mae"``: MAE's (and TinyMIM's) fine-tuning, built from timm's parts: global average
    pooling with ``fc_norm`` (:func:`mae_finetune_model`), drop path ``drop_path``, layer-wise lr
    decay ``layer_decay`` (``timm.optim.param_groups_layer_decay``), lr = ``lr`` x batch / 256 (``lr``
    is MAE's base lr), ``warmup_epochs`` of linear warm-up then cosine to ``min_lr`` per step,
    ``timm.data.Mixup`` (``mixup``, ``cutmix``, label smoothing ``smoothing``) with soft-target
    cross-entropy, and timm's ``RandomErasing`` (``erasing``, per-pixel normal noise). Each training
    image first goes through timm's ``create_transform`` training pipeline, as MAE's fine-tuning
    builds it: ``RandomResizedCrop`` (``crop_scale``, bicubic) + horizontal flip and RandAugment
    (``augment``, timm's string, MAE's ``rand-m9-mstd0.5-inc1``), applied on the fly to the image's
    pixels (the split's normalisation undone with the dataset's ``image_mean`` / ``image_std``, then
    redone); ``augment=None`` trains on the images as they are (data without RGB pixel statistics,
    e.g. stacked event channels, need it).
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
        recipe: str = "plain",
        layer_decay: float = 0.75,
        drop_path: float = 0.1,
        mixup: float = 0.8,
        cutmix: float = 1.0,
        smoothing: float = 0.1,
        erasing: float = 0.25,
        warmup_epochs: float = 5.0,
        min_lr: float = 1e-6,
        augment: str | None = "rand-m9-mstd0.5-inc1",
        crop_scale: tuple[float, float] = (0.08, 1.0),
    ):
        if recipe not in FINETUNE_RECIPES:
            raise BenchbaseError(f"finetune: recipe={recipe!r}; use {' or '.join(FINETUNE_RECIPES)}")
        self.train_split = train_split
        self.test_split = test_split
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.seed = seed
        self.recipe = recipe
        self.layer_decay, self.drop_path, self.mixup, self.cutmix = layer_decay, drop_path, mixup, cutmix
        self.smoothing, self.erasing, self.warmup_epochs, self.min_lr = smoothing, erasing, warmup_epochs, min_lr
        self.augment, self.crop_scale = augment, tuple(crop_scale)

    def evaluate(self, student: VitModel, data: DataBundle, device: torch.device) -> list[Metric]:
        train_set, test_set = data.split(self.train_split), data.split(self.test_split)
        devices = []  # CUDA devices whose random state is forked along with the CPU's
        if device.type == "cuda":
            devices.append(torch.cuda.current_device() if device.index is None else device.index)
        with torch.random.fork_rng(devices=devices), seeded_host_rngs(self.seed):
            torch.manual_seed(self.seed)
            model = copy.deepcopy(student.export())
            model.requires_grad_(True)  # a teacher's exported weights come frozen
            if self.recipe == "mae":
                self._train_mae(model, train_set, data.num_classes, device, self._augmentation(data))
            else:
                self._train_plain(model, train_set, data.num_classes, device)
            model.eval()
            scores, labels = [], []
            with torch.inference_mode():
                for images, targets in DataLoader(test_set, batch_size=self.batch_size, shuffle=False):
                    scores.append(model(images.to(device)).float().cpu())
                    labels.append(torch.as_tensor(targets, dtype=torch.long))
        protocol = f"{self._describe(data.num_classes)}, train split {self.train_split} (n={len(train_set)}), " \
                   f"test split {self.test_split}"
        return accuracy_metrics(torch.cat(scores), torch.cat(labels), data.num_classes, protocol)

    def _loader(self, train_set, drop_last: bool) -> DataLoader:
        return DataLoader(train_set, batch_size=min(self.batch_size, len(train_set)), shuffle=True,
                          drop_last=drop_last, generator=torch.Generator().manual_seed(self.seed))

    def _train_plain(self, model: nn.Module, train_set, num_classes: int, device: torch.device) -> None:
        model.reset_classifier(num_classes)
        model.to(device).train()
        loader = self._loader(train_set, drop_last=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.epochs * len(loader)))
        for _ in range(self.epochs):
            for images, targets in loader:
                loss = F.cross_entropy(model(images.to(device)), targets.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()

    def _augmentation(self, data: DataBundle) -> Callable[[Tensor], Tensor] | None:
        """[B, 3, S, S] normalised images -> the same through timm's fine-tuning transform, one image
        at a time (None without ``augment``); data without RGB pixel statistics is a one-line error."""
        if self.augment is None:
            return None
        if data.in_chans != 3 or data.image_mean is None or data.image_std is None:
            raise BenchbaseError(f"finetune recipe=mae: augment={self.augment!r} needs RGB images with their pixel "
                                 f"statistics, and {data.name} has {data.in_chans} channel(s)"
                                 f"{'' if data.image_mean else ' without image_mean/image_std'}; set "
                                 "params.augment=null")
        from timm.data import auto_augment, create_transform

        transform = create_transform(data.image_size, is_training=True, scale=self.crop_scale,
                                     auto_augment=self.augment, interpolation="bicubic", mean=data.image_mean,
                                     std=data.image_std, re_prob=0.0)  # erasing: after, on the batch
        for step in transform.transforms:
            for op in getattr(step, "ops", ()):  # RandAugment's operations
                if op.aug_fn is auto_augment.posterize:
                    op.aug_fn = posterize
        mean = torch.tensor(data.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(data.image_std).view(1, 3, 1, 1)

        def augmented(images: Tensor) -> Tensor:
            pixels = (images.float() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
            return torch.stack([transform(Image.fromarray(p.permute(1, 2, 0).numpy())) for p in pixels])
        return augmented

    def _train_mae(self, model: nn.Module, train_set, num_classes: int, device: torch.device,
                   augmented: Callable[[Tensor], Tensor] | None = None) -> None:
        from timm.data import Mixup
        from timm.data.random_erasing import RandomErasing
        from timm.loss import SoftTargetCrossEntropy
        from timm.optim import param_groups_layer_decay

        mae_finetune_model(model, num_classes, self.drop_path).to(device).train()
        groups = param_groups_layer_decay(model, self.weight_decay, model.no_weight_decay(),
                                          layer_decay=self.layer_decay)
        loader = self._loader(train_set, drop_last=True)  # Mixup pairs each batch with its reverse: full batches
        batch = loader.batch_size
        mixing = Mixup(mixup_alpha=self.mixup, cutmix_alpha=self.cutmix, label_smoothing=self.smoothing,
                       num_classes=num_classes) if self.mixup > 0 or self.cutmix > 0 else None
        if mixing is not None and batch % 2:
            raise BenchbaseError(f"finetune recipe=mae: Mixup/CutMix pair each image with another in its batch, "
                                 f"so the batch must be even; got {batch} (set batch_size, or mixup=0 cutmix=0)")
        peak = self.lr * batch / 256
        optimizer = torch.optim.AdamW(groups, lr=peak)
        total, warmup = max(1, self.epochs * len(loader)), int(round(self.warmup_epochs * len(loader)))
        erase = RandomErasing(self.erasing, mode="pixel", device=str(device)) if self.erasing > 0 else None
        soft = SoftTargetCrossEntropy()
        step = 0
        for _ in range(self.epochs):
            for images, targets in loader:
                for group in optimizer.param_groups:
                    group["lr"] = warmup_cosine(step, total, warmup, peak, self.min_lr) * group.get("lr_scale", 1.0)
                if augmented is not None:
                    images = augmented(images)
                images, targets = images.to(device), targets.to(device)
                if erase is not None:
                    images = erase(images.clone())
                if mixing is not None:
                    images, soft_targets = mixing(images, targets)
                    loss = soft(model(images), soft_targets)
                else:
                    loss = F.cross_entropy(model(images), targets, label_smoothing=self.smoothing)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1

    def _describe(self, num_classes: int) -> str:
        if self.recipe == "plain":
            return (f"fine-tuning (all weights, new {num_classes}-class head; AdamW lr {self.lr:g}, weight decay "
                    f"{self.weight_decay:g}, cosine decay, batch {self.batch_size}, {self.epochs} epochs, "
                    f"seed {self.seed})")
        return (f"fine-tuning, MAE's recipe from timm's parts (all weights, global average pooling with a new "
                f"fc_norm, new {num_classes}-class head; AdamW base lr {self.lr:g} x batch / 256, layer decay "
                f"{self.layer_decay:g}, weight decay {self.weight_decay:g}, {self.warmup_epochs:g} warm-up epochs then "
                f"cosine to {self.min_lr:g}, drop path {self.drop_path:g}, {self._describe_augment()}, mixup "
                f"{self.mixup:g} / cutmix {self.cutmix:g}, label smoothing {self.smoothing:g}, random erasing "
                f"{self.erasing:g}; batch {self.batch_size}, {self.epochs} epochs, seed {self.seed})")

    def _describe_augment(self) -> str:
        if self.augment is None:
            return "no crop, flip or RandAugment"
        low, high = self.crop_scale
        return f"RandomResizedCrop {low:g}-{high:g} + flip and RandAugment {self.augment} on the pixels"

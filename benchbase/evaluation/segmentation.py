"""Semantic segmentation on the student's patch tokens: a linear probe or a fine-tuned decoder.

The metric is mIoU from one confusion matrix accumulated over every labelled pixel of the test
split (the standard semantic-segmentation protocol), plus pixel accuracy and, optionally,
EventSAM's segment metric (:mod:`benchbase.evaluation.segments`) on the predicted label maps.

Resolution, as mmsegmentation's test pipeline: every image is resized so its short side is the
model's input size S, aspect ratio kept (:func:`~benchbase.data.folders.short_side_size`), and
predicted either whole (``mode="whole"``: models that take any image size, e.g. timm ViTs built
with ``dynamic_img_size``) or by sliding S x S windows (``mode="slide"``, the default, for every
model: SAM's fixed position embedding included), averaging the logits of overlapping windows.
The logits are upsampled bilinearly to each label map's ORIGINAL size, where the confusion matrix
is counted; label maps are never resized for scoring. The head trains on the S x S windows of
the same layout (labels nearest-resized with their image, as mmseg's training pipeline resizes them).

Shapes: B = batch, C = image channels, S = the model's image size, D = embedding width, h/w =
patch grid, K = classes, H'/W' = resized image height/width (short side S), H/W = label map
height/width (any size; logits are upsampled to it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchbase.capture import Tap
from benchbase.components import DataBundle, Evaluator, Metric, SegmentationImages, VitModel
from benchbase.errors import BenchbaseError
from benchbase.evaluation.segments import GT_MIN_AREA, SegmentMetricAccumulator, averaged
from benchbase.evaluation.upernet import LEVELS, UperNetHead, quarter_blocks
from benchbase.outcomes import KEY as OUTCOMES
from benchbase.outcomes import iou_outcomes, ratio_outcomes
from benchbase.pooling import token_grid

HEADS: dict[str, str] = {
    "linear": "linear probe (1x1 conv on the frozen final-norm patch tokens, no BatchNorm)",
    "decoder": (
        "fine-tuned decoder (3x3 conv-GELU-3x3 conv-GELU-1x1 conv of width {width} on the patch grid, "
        "trained with the whole backbone at {scale:g}x the learning rate)"
    ),
    "upernet": (
        "fine-tuned UperNet (BEiT/MAE's: the outputs of blocks {blocks} rescaled 4x, 2x, 1x and 0.5x by "
        "deconvolutions and max pooling, pyramid pooling 1/2/3/6 and an FPN of width {channels} with "
        "BatchNorm, fused and classified at 4x the patch grid, no auxiliary head; trained with the whole "
        "backbone at {scale:g}x the learning rate)"
    ),
}
"""Segmentation heads by name, with what each one trains."""

DECODER_WIDTH = 128
"""Channels of the decoder head's hidden 3x3 convolutions."""

BACKBONE_LR_SCALE = 0.1
"""The fine-tuned backbone's learning rate relative to the decoder head's."""

MODES: dict[str, str] = {
    "slide": "sliding {crop}x{crop} windows with stride {stride}, the logits of each (upsampled bilinearly to the "
             "window) averaged where windows overlap",
    "whole": "whole-image inference at that size",
}
"""Inference modes by name, with what each one does."""

FEATURE_CACHE_ELEMENTS = 1 << 26
"""The linear probe precomputes the train split's frozen features when they fit in this many values."""


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """Pixel counts of (true class, predicted class) pairs, on the inputs' device.

    Args:
        pred: [...] long predicted classes in [0, K).
        target: [...] long true classes (same shape) in [0, K), or ``ignore_index``.
        num_classes: K.
        ignore_index: a target value whose pixels are left out.

    Returns:
        [K, K] long; row = true class, column = predicted class.

    Raises:
        BenchbaseError: a labelled target lies outside [0, K).
    """
    return confusion_matrices(pred.reshape(1, -1), target.reshape(1, -1), num_classes, ignore_index)[0]


def confusion_matrices(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """One confusion matrix per image, as :func:`confusion_matrix` computes it for each.

    Args:
        pred: [b, ...] long predicted classes in [0, K).
        target: [b, ...] long true classes (same shape) in [0, K), or ``ignore_index``.

    Returns:
        [b, K, K] long; their sum over images is the matrix of all pixels.
    """
    images = pred.shape[0]
    pred, target = pred.reshape(images, -1), target.reshape(images, -1)
    image = torch.arange(images, device=pred.device).unsqueeze(1).expand_as(target)
    if ignore_index is not None:
        labelled = target != ignore_index
        pred, target, image = pred[labelled], target[labelled], image[labelled]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise BenchbaseError(
            f"label values must lie in 0..{num_classes - 1} (or be the ignore index {ignore_index}), "
            f"found {int(target.min())}..{int(target.max())}; check the dataset's num_classes and ignore_index"
        )
    pairs = (image.reshape(-1) * num_classes + target.reshape(-1)) * num_classes + pred.reshape(-1)
    counts = torch.bincount(pairs, minlength=images * num_classes * num_classes)
    return counts.reshape(images, num_classes, num_classes)


def image_iou_counts(cms: Tensor) -> Tensor:
    """[b, 3, K] per image and class: intersection (the diagonal), union (row + column - diagonal)
    and labelled pixels (the row sum) of [b, K, K] confusion matrices."""
    diagonal = cms.diagonal(dim1=1, dim2=2)
    truth = cms.sum(dim=2)
    return torch.stack([diagonal, truth + cms.sum(dim=1) - diagonal, truth], dim=1)


def iou_from_confusion(cm: Tensor) -> tuple[Tensor, float]:
    """Per-class intersection over union and their mean.

    Args:
        cm: [K, K] confusion matrix (row = true class, column = predicted class).

    Returns:
        ([K] float64 IoU of each class, nan for a class absent from both ground truth and
        prediction; mIoU = mean over the classes that are not nan, nan if all are).
    """
    cm = cm.double()
    intersection = cm.diagonal()
    union = cm.sum(dim=0) + cm.sum(dim=1) - intersection
    iou = intersection / union  # 0/0 = nan for absent classes
    return iou, float(iou.nanmean())


def pixel_accuracy(cm: Tensor) -> float:
    """Fraction of counted pixels predicted correctly, trace / sum of the [K, K] ``cm`` (nan if empty)."""
    cm = cm.double()
    return float(cm.diagonal().sum() / cm.sum())


def decoder_head(embed_dim: int, num_classes: int) -> nn.Sequential:
    """The light decoder: [B, D, h, w] -> [B, K, h, w] logits (two 3x3 conv + GELU, then a 1x1 conv)."""
    return nn.Sequential(
        nn.Conv2d(embed_dim, DECODER_WIDTH, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(DECODER_WIDTH, DECODER_WIDTH, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(DECODER_WIDTH, num_classes, 1),
    )


def upsampled_groups(logits: Tensor, labels: Sequence[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
    """Logits bilinearly upsampled to the size of their label maps, grouped by label size.

    Args:
        logits: [B, K, h, w].
        labels: B label maps [H_i, W_i] long, on the logits' device.

    Yields:
        ([b, K, H, W] logits, [b, H, W] labels): the whole batch at once when every label map has
        the same size, else one image at a time.
    """
    sizes = {tuple(label.shape) for label in labels}
    if len(sizes) == 1:
        size = sizes.pop()
        yield F.interpolate(logits, size=size, mode="bilinear", align_corners=False), torch.stack(list(labels))
        return
    for image_logits, label in zip(logits, labels):
        upsampled = F.interpolate(image_logits[None], size=tuple(label.shape), mode="bilinear", align_corners=False)
        yield upsampled, label[None]


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """First pixel of each sliding window along a side of ``length`` pixels, as mmseg's
    ``slide_inference`` places them: ``max(length - crop + stride - 1, 0) // stride + 1`` windows,
    the i-th at ``i·stride`` moved back to end inside the image (at 0 when ``length <= crop``)."""
    if crop < 1 or stride < 1:
        raise BenchbaseError(f"sliding windows need crop >= 1 and stride >= 1, got {crop} and {stride}")
    count = max(length - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride + crop, length) - crop, 0) for i in range(count)]


def windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """(top, left) of the ``crop`` x ``crop`` windows covering a ``height`` x ``width`` image, row-major."""
    if min(height, width) < crop:
        raise BenchbaseError(
            f"a {height}x{width} image is smaller than the {crop}x{crop} window; its short side must be at least "
            "the model's image size"
        )
    return [(top, left) for top in window_starts(height, crop, stride) for left in window_starts(width, crop, stride)]


def slide_logits(logits_of: Callable[[Tensor], Tensor], images: Tensor, crop: int, stride: int) -> Tensor:
    """Sliding-window logits (mmseg's ``slide`` mode).

    Args:
        logits_of: [b, C, crop, crop] -> [b, K, h, w] logits of one window.
        images: [b, C, H', W'] images of one size.

    Returns:
        [b, K, H', W']: each window's logits upsampled bilinearly to ``crop`` x ``crop``, summed
        over the windows covering each pixel and divided by their number.
    """
    height, width = images.shape[-2:]
    total, count = None, images.new_zeros(height, width)
    for top, left in windows(height, width, crop, stride):
        logits = logits_of(images[:, :, top : top + crop, left : left + crop])
        logits = F.interpolate(logits, size=(crop, crop), mode="bilinear", align_corners=False)
        if total is None:
            total = logits.new_zeros(*logits.shape[:2], height, width)
        total[:, :, top : top + crop, left : left + crop] += logits
        count[top : top + crop, left : left + crop] += 1
    return total / count


def training_label(label: Tensor, size: tuple[int, int]) -> Tensor:
    """[H, W] long label map resized to ``size`` with nearest neighbour (pixel centres, PIL's
    ``NEAREST``); only the head's training targets are resized, never the scored labels."""
    if tuple(label.shape) == tuple(size):
        return label
    return F.interpolate(label[None, None].double(), size=size, mode="nearest-exact")[0, 0].long()


def _evaluation_batches(
    dataset: SegmentationImages, batch_size: int
) -> Iterator[tuple[Tensor, Tensor, list[Tensor]]]:
    """([b] long dataset indices, [b, C, H', W'] images of one size, b label maps at their original
    sizes) of ``dataset``: each run of ``batch_size`` items, split into groups of equal image size."""
    for index in torch.arange(len(dataset)).split(batch_size):
        items = [dataset.evaluation_item(i) for i in index.tolist()]
        for size in dict.fromkeys(tuple(image.shape[-2:]) for image, _ in items):
            group = [k for k, (image, _) in enumerate(items) if tuple(image.shape[-2:]) == size]
            yield (index[group], torch.stack([items[k][0] for k in group]),
                   [torch.as_tensor(items[k][1]).long() for k in group])


Window = tuple[int, int, int]
"""(dataset index, top, left) of one training window."""


def training_windows(dataset: SegmentationImages, crop: int, stride: int) -> list[Window]:
    """Every ``crop`` x ``crop`` window (of the sliding layout) of every image of ``dataset``, in order."""
    return [(index, top, left) for index in range(len(dataset))
            for top, left in windows(*dataset.resized_shape(index), crop, stride)]


def _window_batches(
    dataset: SegmentationImages, spans: Sequence[Window], order: Tensor, batch_size: int, crop: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """([B] long positions in ``spans``, [B, C, crop, crop] image windows, [B, crop, crop] long
    label windows, labels nearest-resized to their image's size) in ``order`` ([n] long)."""
    for position in order.split(batch_size):
        items: dict[int, tuple[Tensor, Tensor]] = {}
        images, labels = [], []
        for index, top, left in (spans[p] for p in position.tolist()):
            if index not in items:
                image, label = dataset.evaluation_item(index)
                items[index] = image, training_label(torch.as_tensor(label).long(), tuple(image.shape[-2:]))
            image, label = items[index]
            images.append(image[:, top : top + crop, left : left + crop])
            labels.append(label[top : top + crop, left : left + crop])
        yield position, torch.stack(images), torch.stack(labels)


class SegmentationProbe(Evaluator):
    """Semantic segmentation from the student's final-norm patch tokens, scored by mIoU.

    ``head="linear"`` (default) trains a 1x1 convolution (no BatchNorm) on the frozen student's
    patch tokens [B, D, h, w]; the train split's features are computed once when they fit in
    :data:`FEATURE_CACHE_ELEMENTS` values, else per batch. ``head="decoder"`` fine-tunes a copy of
    the student together with :func:`decoder_head` (backbone learning rate ``BACKBONE_LR_SCALE``
    times ``lr``). Images are read with their short side at the bundle's ``image_size`` S, aspect
    ratio kept (``SegmentationImages.evaluation_item``). The head trains on every S x S window of
    the sliding layout (:func:`training_windows`; one per image when images are S x S), labels
    nearest-resized with their image and cropped with it; the window's logits are upsampled
    bilinearly to S x S and trained with pixel cross-entropy (ignoring the bundle's
    ``ignore_index``), AdamW (``lr``, ``weight_decay``, cosine decay to 0) on shuffled mini-batches
    of ``batch_size`` windows for ``epochs`` epochs.

    Prediction (``mode``, :data:`MODES`): ``slide`` (default; every model) averages the logits of
    S x S windows placed every ``stride`` pixels (default ``2·S // 3``, mmseg's 341 for 512);
    ``whole`` runs the whole resized image (models that accept its size: timm ViTs are built with
    ``dynamic_img_size``, SAM encoders are not). Logits are upsampled bilinearly to each label
    map's original size, where the confusion matrix and the per-image outcomes are counted.

    Metrics on the test split: ``mIoU`` and ``pixel_acc`` (percent, from one confusion matrix over
    all its labelled pixels; per-class IoU in ``extras``) and, with ``segment_metric``,
    ``seg_mIoU``, ``seg_aIoU``, ``seg_precision``, ``seg_recall`` (percent, EventSAM's segment
    metric on connected regions of the predicted and true label maps). All randomness runs in a
    forked random state seeded with ``seed``; the student and the global random state are left
    untouched.
    """

    name = "segmentation"

    def __init__(
        self,
        train_split: str = "train",
        test_split: str = "test",
        head: str = "linear",
        epochs: int = 20,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 16,
        seed: int = 0,
        segment_metric: bool = False,
        mode: str = "slide",
        stride: int | None = None,
        blocks: Sequence[int] | None = None,
        channels: int = 512,
    ):
        if head not in HEADS:
            raise BenchbaseError(f"unknown segmentation head {head!r}; available: {', '.join(HEADS)}")
        if mode not in MODES:
            raise BenchbaseError(f"unknown segmentation inference mode {mode!r}; available: {', '.join(MODES)}")
        if epochs < 1 or batch_size < 1:
            raise BenchbaseError(f"segmentation needs epochs >= 1 and batch_size >= 1; got {epochs} and {batch_size}")
        if stride is not None and stride < 1:
            raise BenchbaseError(f"segmentation needs a sliding-window stride >= 1 (or null), got {stride}")
        self.mode = mode
        self.stride = stride
        self.train_split = train_split
        self.test_split = test_split
        self.head = head
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.seed = seed
        self.segment_metric = segment_metric
        if blocks is not None and len(blocks) != LEVELS:
            raise BenchbaseError(f"segmentation head upernet reads {LEVELS} blocks; got blocks={list(blocks)}")
        self.blocks, self.channels = None if blocks is None else [int(b) for b in blocks], channels

    @property
    def reads_frozen_features(self) -> bool:
        """The linear head reads frozen features; the decoder head fine-tunes a copy of the student."""
        return self.head == "linear"

    def inputs(self, backbone: VitModel, images: Tensor) -> Tensor | list[Tensor]:
        """What the head reads of [B, C, H', W'] images: the [B, D, h, w] final patch grid, or for
        UperNet the four [B, D, h, w] outputs of its blocks (``blocks``, else :func:`quarter_blocks`)."""
        if self.head != "upernet":
            return backbone.patch_grid(images)
        taps = [Tap("block", b) for b in (self.blocks or quarter_blocks(backbone.depth))]
        captured = backbone.run(images, taps)
        height, width = images.shape[-2] // backbone.patch_size, images.shape[-1] // backbone.patch_size
        grids = []
        for tap in taps:
            out = captured[tap]
            grids.append(out.permute(0, 3, 1, 2) if out.dim() == 4  # a SAM block's [B, h, w, D]
                         else token_grid(out[:, backbone.num_prefix_tokens :], height, width))
        return grids

    def window_stride(self, crop: int) -> int:
        """The sliding windows' stride for ``crop`` x ``crop`` windows: ``stride``, else ``2·crop // 3``."""
        return self.stride or max(2 * crop // 3, 1)

    def protocol(self, data: DataBundle, train_size: int, windows: int) -> str:
        """How the segmentation was trained and predicted (each metric appends its own definition)."""
        blocks = "quarter-depth (for 12 blocks 2, 5, 8, 11)" if self.blocks is None else ", ".join(map(str, self.blocks))
        head = HEADS[self.head].format(width=DECODER_WIDTH, scale=BACKBONE_LR_SCALE, blocks=blocks,
                                       channels=self.channels)
        ignored = "none" if data.ignore_index is None else str(data.ignore_index)
        crop = data.image_size
        stride = self.window_stride(crop)
        inference = MODES[self.mode].format(crop=crop, stride=stride)
        return (
            f"segmentation {head}; images resized so the short side is {crop} px, aspect ratio kept (each side "
            f"x {crop}/short side, rounded half up, as mmseg's keep_ratio resize); trained on the {crop}x{crop} "
            f"windows every {stride} px (n={windows} windows) with labels nearest-resized with the image, window "
            f"logits bilinearly upsampled to the window; pixel cross-entropy, AdamW lr {self.lr:g}, weight decay "
            f"{self.weight_decay:g}, cosine decay, batch {self.batch_size} windows, {self.epochs} epochs, seed "
            f"{self.seed}; predicted by {inference}, logits bilinearly upsampled to each label map's original size "
            f"(labels never resized for scoring); train split {self.train_split} (n={train_size}), test split "
            f"{self.test_split}, ignore label {ignored}"
        )

    def evaluate(self, student: VitModel, data: DataBundle, device: torch.device) -> list[Metric]:
        train_set, test_set = data.split(self.train_split), data.split(self.test_split)
        if len(train_set) == 0 or len(test_set) == 0:
            raise BenchbaseError(
                f"segmentation needs non-empty splits {self.train_split!r} and {self.test_split!r} "
                f"of dataset {data.name!r}"
            )
        devices = []  # CUDA devices whose random state is forked along with the CPU's
        if device.type == "cuda":
            devices.append(torch.cuda.current_device() if device.index is None else device.index)
        was_training = student.training
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.seed)
                crop = data.image_size
                spans = training_windows(train_set, crop, self.window_stride(crop))
                if self.head == "linear":
                    student.eval()
                    backbone, head = student, nn.Conv2d(student.token_width, data.num_classes, 1).to(device)
                    features = self._frozen_features(student, train_set, spans, crop, device)
                    parameters = [{"params": head.parameters()}]
                else:
                    backbone = VitModel(copy.deepcopy(student.export()))
                    backbone.requires_grad_(True).to(device).train()  # a teacher's exported weights come frozen
                    head = (UperNetHead(student.token_width, data.num_classes, self.channels) if self.head == "upernet"
                            else decoder_head(student.token_width, data.num_classes)).to(device)
                    features = None
                    parameters = [
                        {"params": head.parameters()},
                        {"params": backbone.parameters(), "lr": self.lr * BACKBONE_LR_SCALE},
                    ]
                optimizer = torch.optim.AdamW(parameters, lr=self.lr, weight_decay=self.weight_decay)
                self._train(backbone, head, features, train_set, spans, crop, data.ignore_index, optimizer, device)
                backbone.eval()
                head.eval()
                cm, per_image, segments = self._predict(backbone, head, test_set, data, device)
        finally:
            student.train(was_training)
        return self._metrics(cm, per_image, segments, data, test_set, len(train_set), len(spans))

    def _frozen_features(
        self, student: VitModel, dataset: SegmentationImages, spans: Sequence[Window], crop: int, device: torch.device
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """A function (window positions [B], image windows [B, C, S, S]) -> [B, D, h, w] frozen patch features.

        The features of every training window are computed once (and kept on ``device``) when they
        fit in :data:`FEATURE_CACHE_ELEMENTS` values; otherwise each batch runs the frozen student.
        """

        def run(images: Tensor) -> Tensor:
            with torch.no_grad():
                return student.patch_grid(images.to(device))

        size = len(spans) * student.token_width * student.num_patches
        if size > FEATURE_CACHE_ELEMENTS:
            return lambda _position, images: run(images)
        everything = _window_batches(dataset, spans, torch.arange(len(spans)), self.batch_size, crop)
        cache = torch.cat([run(images) for _, images, _ in everything])
        return lambda position, _images: cache[position.to(device)]

    def _train(
        self,
        backbone: VitModel,
        head: nn.Module,
        features: Callable[[Tensor, Tensor], Tensor] | None,
        dataset: SegmentationImages,
        spans: Sequence[Window],
        crop: int,
        ignore_index: int | None,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
    ) -> None:
        """Train ``head`` (and the backbone when ``features`` is None) for ``self.epochs`` epochs
        over the training windows ``spans``."""
        generator = torch.Generator().manual_seed(self.seed)
        batches_per_epoch = -(-len(spans) // self.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs * batches_per_epoch)
        ignore = -100 if ignore_index is None else ignore_index  # cross-entropy's default: no label uses it
        head.train()
        for _ in range(self.epochs):
            order = torch.randperm(len(spans), generator=generator)
            for position, images, labels in _window_batches(dataset, spans, order, self.batch_size, crop):
                if self.head == "upernet" and images.shape[0] < 2:
                    continue  # BatchNorm trains on two or more: an epoch's last window alone is left out
                inputs = self.inputs(backbone, images.to(device)) if features is None else features(position, images)
                target = labels.to(device)
                logits = F.interpolate(head(inputs), size=(crop, crop), mode="bilinear", align_corners=False)
                loss = F.cross_entropy(logits, target, ignore_index=ignore, reduction="sum")
                loss = loss / max(int((target != ignore).sum()), 1)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()

    def predict_logits(self, logits_of: Callable[[Tensor], Tensor], images: Tensor, crop: int) -> Tensor:
        """[b, K, ., .] logits of [b, C, H', W'] resized images in ``self.mode``: the head's own grid
        for ``whole``, [b, K, H', W'] window averages for ``slide`` (:func:`slide_logits`)."""
        if self.mode == "whole":
            return logits_of(images)
        return slide_logits(logits_of, images, crop, self.window_stride(crop))

    def _predict(
        self, backbone: VitModel, head: nn.Module, dataset: SegmentationImages, data: DataBundle, device: torch.device
    ) -> tuple[Tensor, Tensor, tuple[SegmentMetricAccumulator, Tensor] | None]:
        """The [K, K] confusion matrix over the whole split, each test image's [n, 3, K] counts (see
        :func:`image_iou_counts`, in dataset order), and the segment metric's accumulator with the
        [n] dataset index of each image it was given."""
        cm = torch.zeros(data.num_classes, data.num_classes, dtype=torch.long, device=device)
        per_image, order = [], []
        segments = SegmentMetricAccumulator(data.ignore_index) if self.segment_metric else None
        crop = data.image_size
        with torch.inference_mode():
            for index, images, labels in _evaluation_batches(dataset, self.batch_size):
                order.append(index)
                logits = self.predict_logits(lambda x: head(self.inputs(backbone, x)), images.to(device), crop)
                if segments is not None:  # each image's recording; the groups below keep the batch's order
                    sequences = iter([dataset.sequence(i) for i in index.tolist()])
                for upsampled, target in upsampled_groups(logits, [label.to(device) for label in labels]):
                    pred = upsampled.argmax(dim=1)  # [b, H, W]
                    image_cms = confusion_matrices(pred, target, data.num_classes, data.ignore_index)
                    cm += image_cms.sum(dim=0)
                    per_image.append(image_iou_counts(image_cms).cpu())
                    if segments is not None:
                        for pred_map, gt_map in zip(pred.cpu(), target.cpu()):
                            segments.update(pred_map, gt_map, next(sequences))
        order = torch.cat(order)
        return cm, torch.cat(per_image)[order.argsort()], None if segments is None else (segments, order)

    def _metrics(
        self,
        cm: Tensor,
        per_image: Tensor,
        segments: tuple[SegmentMetricAccumulator, Tensor] | None,
        data: DataBundle,
        test_set: SegmentationImages,
        train_size: int,
        windows: int,
    ) -> list[Metric]:
        """``mIoU`` and ``pixel_acc`` (and the ``seg_*`` metrics) in percent; ``per_image`` [n, 3, K]
        (intersections, unions, labelled pixels per class of each test image) becomes the outcomes of
        ``mIoU`` and ``pixel_acc``, the segment matches those of the ``seg_*`` metrics."""
        pixels = int(cm.sum())
        if pixels == 0:
            raise BenchbaseError(f"test split {self.test_split!r} of dataset {data.name!r} has no labelled pixels")
        per_class, miou = iou_from_confusion(cm.cpu())
        accuracy = pixel_accuracy(cm.cpu())
        names = list(getattr(test_set, "classes", []))
        if len(names) != data.num_classes:
            names = [str(k) for k in range(data.num_classes)]
        per_class_iou = {name: None if math.isnan(iou) else 100 * iou for name, iou in zip(names, per_class.tolist())}
        protocol = self.protocol(data, train_size, windows)
        counted = (f"from a confusion matrix accumulated over the whole split at each label map's original "
                   f"resolution (n={pixels} labelled test pixels)")
        metrics = [
            Metric(
                name="mIoU",
                value=100 * miou,
                n=pixels,
                protocol=f"{protocol}; mIoU {counted}, mean IoU over the classes present in ground truth or prediction",
                extras={"per_class_iou": per_class_iou, "pixel_accuracy": 100 * accuracy,
                        OUTCOMES: iou_outcomes(per_image[:, 0], per_image[:, 1])},
            ),
            Metric(name="pixel_acc", value=100 * accuracy, n=pixels, protocol=f"{protocol}; pixel accuracy {counted}",
                   extras={OUTCOMES: ratio_outcomes(per_image[:, 0].sum(dim=1), per_image[:, 2].sum(dim=1))}),
        ]
        if segments is not None:
            accumulator, order = segments
            result = accumulator.compute()
            segment_text = (
                f"EventSAM segment metric as released: segments are 8-connected regions of equal label (of at "
                f"least {GT_MIN_AREA} pixels, ground truth and prediction; predictions over labelled pixels), each "
                f"ground-truth segment matched with the predicted segment of highest IoU; {averaged(result)}"
            )
            for key, what in (
                ("mIoU", "mean matched IoU"),
                ("aIoU", "matched IoU weighted by ground-truth segment area"),
                ("precision", "mean |gt ∩ pred| / |pred| of the matches"),
                ("recall", "mean |gt ∩ pred| / |gt| of the matches"),
            ):
                metrics.append(
                    Metric(
                        name=f"seg_{key}",
                        value=100 * result[key],
                        n=result["count"],
                        protocol=f"{protocol}; {segment_text}; {what}",
                        extras={OUTCOMES: accumulator.outcomes(key, order.tolist(),
                                                               None if key == "mIoU" else "seg_mIoU")},
                    )
                )
        return metrics

"""EventSAM's segment metric: every ground-truth segment matched with its best predicted segment.

EventSAM (CVPR 2024, ``evaluate/calculate_metric.py``) scores class-agnostic masks: each
ground-truth segment of at least :data:`GT_MIN_AREA` pixels is matched with the predicted segment
of highest IoU, and the matched pairs give

- ``mIoU``: mean best IoU over ground-truth segments,
- ``aIoU``: best IoU averaged with weights equal to the ground-truth segment areas,
- ``precision``: mean |gt ∩ pred| / |pred| of the matched pairs (EventSAM's mP),
- ``recall``: mean |gt ∩ pred| / |gt| of the matched pairs (EventSAM's mR).

Values are fractions in [0, 1]. For semantic label maps the segments are the connected regions of
equal label (:func:`connected_segments`). Overlaps are counted with one intersection matrix
(a product of stacked masks, or a bincount of (gt segment, predicted segment) pair ids), never
with a Python loop over pixels.

Shapes: H/W = label map height/width, G = ground-truth segments, P = predicted segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from torch import Tensor

from benchbase.outcomes import Outcomes, segment_outcomes, shared_outcomes

GT_MIN_AREA = 12
"""EventSAM counts a ground-truth segment only if it has at least this many pixels."""

PRED_MIN_AREA = 12
"""EventSAM's released metric counts a predicted segment only if it has at least this many pixels
(``get_unique_colors(min_size=12)`` reads both maps)."""

_NO_MATCHES = (np.zeros(0),) * 4  # (IoU, precision, recall, area) of zero ground-truth segments

STATISTIC_KINDS = {"mIoU": "segment_iou", "aIoU": "segment_aiou", "precision": "segment_precision",
                   "recall": "segment_recall"}
"""Each statistic of the metric and its outcome kind (:mod:`benchbase.outcomes`)."""

CONNECTIVITIES = (4, 8)
"""Pixel neighbourhoods a connected segment may use (edge neighbours only, or edges and corners)."""


def _as_array(label_map: np.ndarray | Tensor) -> np.ndarray:
    """A label map ([H, W]) as a numpy array (tensors are moved to the CPU)."""
    if isinstance(label_map, Tensor):
        return label_map.detach().cpu().numpy()
    return np.asarray(label_map)


def segment_ids(
    label_map: np.ndarray | Tensor, ignore_index: int | None = None, connectivity: int = 8, min_area: int = 1
) -> tuple[np.ndarray, int]:
    """Number the connected regions of equal label.

    Args:
        label_map: [H, W] integer labels.
        ignore_index: a label whose pixels belong to no segment.
        connectivity: 8 (edges and corners connect pixels) or 4 (edges only).
        min_area: regions with fewer pixels belong to no segment.

    Returns:
        ([H, W] int64 segment index of every pixel, -1 where it is in no segment; the number of
        segments S). Segments are numbered by label, then in scipy's raster order within a label.
    """
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be 4 or 8, not {connectivity!r}")
    labels = _as_array(label_map)
    if labels.ndim != 2:
        raise ValueError(f"a label map must be [H, W], got shape {labels.shape}")
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    ids = np.full(labels.shape, -1, dtype=np.int64)
    count = 0
    for value in np.unique(labels):
        if ignore_index is not None and value == ignore_index:
            continue
        regions, found = ndimage.label(labels == value, structure=structure)
        inside = regions > 0
        ids[inside] = regions[inside] + (count - 1)
        count += found
    if min_area > 1 and count:
        kept = np.bincount(ids[ids >= 0], minlength=count) >= min_area  # [S]
        renumber = np.where(kept, np.cumsum(kept) - 1, -1)
        ids = np.where(ids >= 0, renumber[ids.clip(min=0)], -1)
        count = int(kept.sum())
    return ids, count


def connected_segments(
    label_map: np.ndarray | Tensor, ignore_index: int | None = None, connectivity: int = 8, min_area: int = 1
) -> list[np.ndarray]:
    """The connected regions of equal label as masks, in the order of :func:`segment_ids`.

    Two separate blobs of the same class are two segments. Arguments as in :func:`segment_ids`;
    returns S bool masks of shape [H, W].
    """
    ids, count = segment_ids(label_map, ignore_index, connectivity, min_area)
    return [ids == index for index in range(count)]


def best_matches(
    intersection: np.ndarray, gt_area: np.ndarray, pred_area: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Match every ground-truth segment with the predicted segment of highest IoU, as whole counts.

    Ties go to the first predicted segment; a ground-truth segment with no predicted segment at
    all, or none overlapping it, shares 0 pixels with a match of area 0.

    Args:
        intersection: [G, P] pixels shared by ground-truth segment g and predicted segment p.
        gt_area: [G] pixels of each ground-truth segment (positive).
        pred_area: [P] pixels of each predicted segment.

    Returns:
        ([G] pixels each ground-truth segment shares with its match, [G] the match's area).
    """
    count = intersection.shape[0]
    if intersection.shape[1] == 0:
        return np.zeros(count, dtype=np.int64), np.zeros(count, dtype=np.int64)
    union = gt_area[:, None] + pred_area[None, :] - intersection
    iou = np.divide(intersection, union, out=np.zeros(intersection.shape), where=union > 0)
    best = iou.argmax(axis=1)  # [G]
    shared = intersection[np.arange(count), best]
    return shared, np.where(shared > 0, pred_area[best], 0)


def match_scores(shared: np.ndarray, gt_area: np.ndarray, matched_area: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """([G] IoU, [G] precision |∩|/|pred|, [G] recall |∩|/|gt|) of matches given as counts ([G]
    each, as from :func:`best_matches`); 0 where a segment has no overlapping match."""
    shared, gt_area, matched_area = (np.asarray(a, dtype=np.float64) for a in (shared, gt_area, matched_area))
    union = gt_area + matched_area - shared
    iou = np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)
    precision = np.divide(shared, matched_area, out=np.zeros_like(shared), where=matched_area > 0)
    return iou, precision, shared / gt_area


def match_segments(
    intersection: np.ndarray, gt_area: np.ndarray, pred_area: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """([G] IoU, [G] precision, [G] recall) of each ground-truth segment's best match (arguments
    as in :func:`best_matches`)."""
    shared, matched_area = best_matches(intersection, gt_area, pred_area)
    return match_scores(shared, gt_area, matched_area)


def summarise_matches(
    iou: np.ndarray, precision: np.ndarray, recall: np.ndarray, gt_area: np.ndarray
) -> dict[str, float]:
    """The metric over matched ground-truth segments (each argument [G], as from :func:`match_segments`).

    Returns:
        {"mIoU", "aIoU", "precision", "recall": float in [0, 1] (nan when G = 0), "count": G}.
    """
    count = int(iou.shape[0])
    if count == 0:
        nan = float("nan")
        return {"mIoU": nan, "aIoU": nan, "precision": nan, "recall": nan, "count": 0}
    return {
        "mIoU": float(iou.mean()),
        "aIoU": float(np.average(iou, weights=gt_area)),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "count": count,
    }


def _stack_masks(masks: Sequence[np.ndarray | Tensor]) -> np.ndarray:
    """[n, H·W] float64 rows of the flattened masks (n >= 1)."""
    return np.stack([_as_array(mask).reshape(-1) for mask in masks]).astype(np.float64)


def segment_metric(
    pred_segments: Sequence[np.ndarray | Tensor], gt_segments: Sequence[np.ndarray | Tensor]
) -> dict[str, float]:
    """EventSAM's segment metric of one image from its segments as masks.

    Masks may overlap (e.g. SAM's automatic masks); the intersection matrix is the product of the
    stacked, flattened masks.

    Args:
        pred_segments: P bool masks [H, W] of the prediction.
        gt_segments: G bool masks [H, W] of the ground truth, none empty.

    Returns:
        {"mIoU", "aIoU", "precision", "recall", "count"} as in :func:`summarise_matches`.
    """
    if not gt_segments:
        return summarise_matches(*_NO_MATCHES)
    gt = _stack_masks(gt_segments)
    pred = _stack_masks(pred_segments) if pred_segments else np.zeros((0, gt.shape[1]))
    if pred.shape[1] != gt.shape[1]:
        raise ValueError(f"predicted masks have {pred.shape[1]} pixels, ground-truth masks {gt.shape[1]}")
    gt_area = gt.sum(axis=1)
    if (gt_area == 0).any():
        raise ValueError(f"ground-truth segment {int(np.argmin(gt_area))} is empty")
    iou, precision, recall = match_segments(gt @ pred.T, gt_area, pred.sum(axis=1))
    return summarise_matches(iou, precision, recall, gt_area)


def averaged(result: dict[str, Any]) -> str:
    """How :meth:`SegmentMetricAccumulator.compute` averaged ``result``, for protocol lines."""
    return (f"mean over each image's ground-truth segments, then over the images of each sequence, then over "
            f"the {result['sequences']} sequences (n={result['count']} ground-truth segments)")


class SegmentMetricAccumulator:
    """EventSAM's segment metric over a whole split of semantic label maps, averaged as released.

    ``update`` splits both maps of an image into connected regions of equal label (``connectivity``),
    ground-truth regions below ``gt_min_area`` pixels and predicted segments below ``pred_min_area``
    are dropped (EventSAM's 12-pixel rule, applied to both maps), pixels whose ground truth is
    ``ignore_index`` belong to neither side, and every ground-truth segment is matched with its best
    predicted segment. ``compute`` averages as EventSAM's ``calculate_metric.py``: each image's mean
    over its ground-truth segments (aIoU: weighted by their areas), then the mean over the images of
    each sequence (the ``sequence`` an image was added with; None: its own), then over sequences.
    ``outcomes`` stores the matches as whole counts per image with each image's sequence, for paired
    tests between models scored on the same images (:mod:`benchbase.outcomes`).
    """

    def __init__(self, ignore_index: int | None = None, connectivity: int = 8, gt_min_area: int = GT_MIN_AREA,
                 pred_min_area: int = PRED_MIN_AREA):
        if connectivity not in CONNECTIVITIES:
            raise ValueError(f"connectivity must be 4 or 8, not {connectivity!r}")
        self.ignore_index = ignore_index
        self.connectivity = connectivity
        self.gt_min_area, self.pred_min_area = gt_min_area, pred_min_area
        self._matches: list[tuple[np.ndarray, ...]] = []  # per image: [G] shared, gt area, matched area
        self._sequences: list[str] = []  # per image: its sequence ("\0<index>": its own)

    def update(self, pred_map: np.ndarray | Tensor, gt_map: np.ndarray | Tensor, sequence: str | None = None) -> None:
        """Add one image of ``sequence``: ``pred_map`` and ``gt_map`` are [H, W] integer label maps."""
        pred, gt = _as_array(pred_map), _as_array(gt_map)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
        if self.ignore_index is not None:
            pred = np.where(gt == self.ignore_index, self.ignore_index, pred)
        self._add(*segment_ids(pred, self.ignore_index, self.connectivity, self.pred_min_area), gt, sequence)

    def update_segments(self, pred_ids: np.ndarray | Tensor, gt_map: np.ndarray | Tensor,
                        sequence: str | None = None) -> None:
        """Add one image of ``sequence`` whose predicted segments are given: ``pred_ids`` [H, W] int
        segment index of every pixel (-1: none; a segment need not be connected, e.g. SAM's painted
        masks), and ``gt_map`` [H, W] the true label map. Pixels whose ground truth is
        ``ignore_index`` belong to no predicted segment; segments left with fewer than
        ``pred_min_area`` pixels are dropped."""
        pred_ids, gt = _as_array(pred_ids).astype(np.int64), _as_array(gt_map)
        if pred_ids.shape != gt.shape:
            raise ValueError(f"prediction {pred_ids.shape} and ground truth {gt.shape} differ in shape")
        if self.ignore_index is not None:
            pred_ids = np.where(gt == self.ignore_index, -1, pred_ids)
        count = int(pred_ids.max(initial=-1)) + 1
        area = np.bincount(pred_ids[pred_ids >= 0], minlength=count)
        kept = area >= self.pred_min_area
        renumber = np.where(kept, np.cumsum(kept) - 1, -1)  # [count] new id of each segment, -1 dropped
        pred_ids = np.where(pred_ids >= 0, renumber[np.maximum(pred_ids, 0)] if count else -1, -1)
        self._add(pred_ids, int(kept.sum()), gt, sequence)

    def _add(self, pred_ids: np.ndarray, pred_count: int, gt: np.ndarray, sequence: str | None) -> None:
        """Match the ground-truth segments of label map ``gt`` with predicted segments ``pred_ids``."""
        gt_ids, gt_count = segment_ids(gt, self.ignore_index, self.connectivity, self.gt_min_area)
        both = (gt_ids >= 0) & (pred_ids >= 0)
        pairs = gt_ids[both] * pred_count + pred_ids[both]
        intersection = np.bincount(pairs, minlength=gt_count * pred_count).reshape(gt_count, pred_count)
        gt_area = np.bincount(gt_ids[gt_ids >= 0], minlength=gt_count)
        pred_area = np.bincount(pred_ids[pred_ids >= 0], minlength=pred_count)
        shared, matched_area = best_matches(intersection, gt_area, pred_area)
        self._matches.append((shared, gt_area, matched_area))
        self._sequences.append(f"\0{len(self._sequences)}" if sequence is None else str(sequence))

    def _pooled(self, matches: Sequence[tuple[np.ndarray, ...]] | None = None) -> tuple[np.ndarray, ...]:
        """[G] shared pixels, ground-truth areas and matched areas of every segment of ``matches``
        (default: every image added so far)."""
        matches = self._matches if matches is None else matches
        if not matches:
            return (np.zeros(0, dtype=np.int64),) * 3
        return tuple(np.concatenate(column) for column in zip(*matches))

    def compute(self) -> dict[str, float]:
        """{"mIoU", "aIoU", "precision", "recall": fractions averaged per image, then per sequence
        (nan without a ground-truth segment), "count": ground-truth segments, "sequences": the
        sequences with one}, from the images added so far."""
        per_image = [len(shared) for shared, _, _ in self._matches]
        if not sum(per_image):
            return {**{key: float("nan") for key in STATISTIC_KINDS}, "count": 0, "sequences": 0}
        arrays = self._arrays()
        result: dict[str, Any] = {key: Outcomes(kind, arrays).value() / 100 for key, kind in STATISTIC_KINDS.items()}
        result["count"] = int(sum(per_image))
        result["sequences"] = len({seq for seq, n in zip(self._sequences, per_image) if n})
        return result

    def outcomes(self, statistic: str, order: Sequence[int] | None = None, arrays_of: str | None = None
                 ) -> dict[str, Any]:
        """The stored outcomes of ``statistic`` ("mIoU", "aIoU", "precision" or "recall"): each
        image's segment count and every segment's counts, images in the order they were added or,
        with ``order`` (each added image's index in its split), in split order. With ``arrays_of``
        (the name of the metric of the same task that stores them), only a reference to those arrays."""
        kind = STATISTIC_KINDS[statistic]
        if arrays_of is not None:
            return shared_outcomes(kind, arrays_of)
        return segment_outcomes(kind, **self._arrays(order))

    def _arrays(self, order: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """The outcome arrays (:data:`benchbase.outcomes.SEGMENT_ARRAYS` and ``sequences``) of the
        images added so far, in the order added or, with ``order``, in split order."""
        index = range(len(self._matches)) if order is None else np.argsort(order, kind="stable")
        matches = [self._matches[i] for i in index]
        segments = np.array([len(shared) for shared, _, _ in matches], dtype=np.int64)
        shared, gt_area, pred_area = self._pooled(matches)
        sequences = np.unique(np.array([self._sequences[i] for i in index], dtype=object),
                              return_inverse=True)[1].reshape(-1) if matches else np.zeros(0, dtype=np.int64)
        return {"segments": segments, "shared": shared, "gt_area": gt_area, "pred_area": pred_area,
                "sequences": sequences}

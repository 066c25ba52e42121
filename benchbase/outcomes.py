"""Per-sample outcomes behind a metric, stored compactly with it for paired significance tests.

Every model of a suite is scored on the same episodes and test images, so two rows can be compared
sample by sample (:mod:`benchbase.significance`). An evaluator that can do so stores what each
sample contributed in ``Metric.extras["outcomes"]``, in one of these kinds:

- ``mean``: ``value = 100 · mean_i(correct_i / total_i)``: few-shot episodes (correct queries of
  ``total`` queries per episode), per-image top-k hits (``total`` 1);
- ``ratio``: ``value = 100 · Σ_i num_i / Σ_i den_i``: pixel accuracy (correct / labelled pixels per
  test image);
- ``iou``: ``value = 100 · mean_k (Σ_i I_ik / Σ_i U_ik)`` over the classes with a non-empty union:
  mIoU from each test image's per-class intersections and unions (the same number as one confusion
  matrix over the split).
- ``segment_iou``, ``segment_aiou``, ``segment_precision``, ``segment_recall``: EventSAM's segment
  metric (:mod:`benchbase.evaluation.segments`) from each ground-truth segment's match, grouped by
  test image: ``segments`` [n] ground-truth segments per image, then per segment (G = Σ segments,
  in image order) the pixels it ``shared`` with its matched prediction, its ``gt_area`` and the
  matched prediction's ``pred_area``. Per segment, IoU = shared / (gt_area + pred_area - shared),
  precision = shared / pred_area (0 without a match), recall = shared / gt_area. With the optional
  [n] ``sequences`` (each image's sequence id) the value is EventSAM's released average: each
  image's mean over its segments (``segment_aiou``: IoU weighted by ``gt_area``), then the mean over
  the images of each sequence, then over the sequences (images without a ground-truth segment left
  out); outcomes stored without it (before it was kept) pool every segment of the split. A
  bootstrap over images resamples each image's segments together.

The statistics of the segment metric share one set of arrays: the first stores them, the others
name it (:func:`shared_outcomes`). Arrays are stored as the smallest unsigned integer type that holds them, zlib-compressed and
base64-encoded (2,000 episodes of 75 queries take about 2 kB), so tables and tests are recomputed
from stored records without rerunning anything.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from benchbase.errors import BenchbaseError

KEY = "outcomes"
"""The ``Metric.extras`` key that holds a metric's outcomes."""

SEGMENT_ARRAYS = ("segments", "shared", "gt_area", "pred_area")
"""The arrays of the segment-metric kinds: [n] segments per image, then [G] counts per segment."""

SEQUENCES = "sequences"
"""The optional array of the segment-metric kinds: [n] sequence id of each test image."""

OPTIONAL: dict[str, tuple[str, ...]] = {}
"""Each kind's optional arrays (stored where the evaluator has them), filled below."""

SEGMENT_KINDS = ("segment_iou", "segment_aiou", "segment_precision", "segment_recall")
"""The segment-metric kinds, one per statistic of EventSAM's metric (mIoU, aIoU, mP, mR)."""

KINDS: dict[str, tuple[str, ...]] = {
    "mean": ("correct", "total"),
    "ratio": ("num", "den"),
    "iou": ("intersection", "union"),
    **{kind: SEGMENT_ARRAYS for kind in SEGMENT_KINDS},
}
"""Each kind and the arrays it stores (see the module docstring); the first array has the samples
(episodes or test images) on its first axis."""

OPTIONAL.update({kind: (SEQUENCES,) for kind in SEGMENT_KINDS})


def _array(values: Tensor | np.ndarray | int) -> np.ndarray:
    array = np.asarray(values.detach().cpu().numpy() if isinstance(values, Tensor) else values)
    if array.size and (array.min() < 0 or not np.array_equal(array, np.round(array))):
        raise ValueError("outcome arrays hold non-negative whole counts")
    return array.astype(np.min_scalar_type(int(array.max()) if array.size else 0))


def encode_array(values: Tensor | np.ndarray) -> dict[str, Any]:
    """Non-negative integer counts as JSON: dtype, shape and the zlib-compressed bytes in base64."""
    array = _array(values)
    data = base64.b64encode(zlib.compress(np.ascontiguousarray(array).tobytes(), 9)).decode("ascii")
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": data}


def decode_array(stored: Mapping[str, Any]) -> np.ndarray:
    """The array :func:`encode_array` stored, as int64."""
    raw = zlib.decompress(base64.b64decode(stored["data"]))
    return np.frombuffer(raw, dtype=np.dtype(stored["dtype"])).reshape(stored["shape"]).astype(np.int64)


@dataclass(frozen=True)
class Outcomes:
    """The per-sample outcomes of one metric of one run.

    ``arrays`` holds the kind's arrays (:data:`KINDS`): ``mean`` and ``ratio`` [n], ``iou``
    [n, K] (n = episodes or test images, K = classes), the segment kinds ``segments`` [n] and
    [G] per-segment counts.
    """

    kind: str
    arrays: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        """The number of samples."""
        return int(next(iter(self.arrays.values())).shape[0])

    def value(self, weights: np.ndarray | None = None) -> float | np.ndarray:
        """The metric in percent; with ``weights`` [R, n] (bootstrap counts per sample), [R] values."""
        if self.kind in SEGMENT_KINDS:
            num, den = self._segment_sums()  # [n] each
            if SEQUENCES in self.arrays:
                return 100 * self._sequence_mean(num, den, weights)
            with np.errstate(invalid="ignore", divide="ignore"):  # nan where no ground-truth segment was drawn
                return 100 * num.sum() / den.sum() if weights is None else 100 * (weights @ num) / (weights @ den)
        a, b = (self.arrays[name].astype(np.float64) for name in KINDS[self.kind])
        if self.kind == "mean":
            per_sample = a / b
            return 100 * per_sample.mean() if weights is None else 100 * (weights @ per_sample) / weights.sum(axis=1)
        num, den = (a.sum(axis=0), b.sum(axis=0)) if weights is None else (weights @ a, weights @ b)
        if self.kind == "ratio":
            return 100 * num / den
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100 * np.nanmean(np.where(den > 0, num / den, np.nan), axis=-1)

    def _segment_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Each image's [n] sum of per-segment scores (times ``gt_area`` for ``segment_aiou``) and
        [n] sum of their weights (segments, or ``gt_area`` for ``segment_aiou``)."""
        per_image = self.arrays["segments"]
        shared, gt, pred = (self.arrays[name].astype(np.float64) for name in SEGMENT_ARRAYS[1:])
        if per_image.sum() != shared.size:
            raise BenchbaseError(f"stored segment outcomes count {per_image.sum()} segments but hold {shared.size}")
        union = gt + pred - shared
        iou = np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)
        score, weight = {
            "segment_iou": (iou, np.ones_like(iou)),
            "segment_aiou": (iou * gt, gt),
            "segment_precision": (np.divide(shared, pred, out=np.zeros_like(shared), where=pred > 0), np.ones_like(iou)),
            "segment_recall": (np.divide(shared, gt, out=np.zeros_like(shared), where=gt > 0), np.ones_like(iou)),
        }[self.kind]
        image = np.repeat(np.arange(per_image.size), per_image)  # [G] each segment's image
        return (np.bincount(image, weights=score, minlength=per_image.size),
                np.bincount(image, weights=weight, minlength=per_image.size))

    def _sequence_mean(self, num: np.ndarray, den: np.ndarray, weights: np.ndarray | None) -> float | np.ndarray:
        """EventSAM's average of per-image statistics ``num / den`` ([n] each): the mean over each
        sequence's images (weighted by ``weights`` [R, n] under a bootstrap), then over the sequences
        that kept an image with a ground-truth segment; a float, or [R] values."""
        from scipy import sparse

        has = den > 0
        per_image = np.divide(num, den, out=np.zeros_like(num), where=has)  # [n]
        ids = np.unique(self.arrays[SEQUENCES], return_inverse=True)[1].reshape(-1)
        member = sparse.csr_matrix((has.astype(np.float64), (np.arange(ids.size), ids)))  # [n, S]
        drawn = np.ones((1, num.size)) if weights is None else np.asarray(weights, dtype=np.float64)
        total = np.asarray((drawn * per_image) @ member)  # [R, S]
        count = np.asarray(drawn @ member)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.nanmean(np.where(count > 0, total / count, np.nan), axis=-1)  # [R]; nan: no segment drawn
        return float(value[0]) if weights is None else value

    def to_json(self) -> dict[str, Any]:
        names = [*KINDS[self.kind], *(n for n in OPTIONAL.get(self.kind, ()) if n in self.arrays)]
        return {"kind": self.kind, **{name: encode_array(self.arrays[name]) for name in names}}

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> Outcomes:
        kind = stored.get("kind")
        if kind not in KINDS:
            raise BenchbaseError(f"stored outcomes of unknown kind {kind!r}; known: {', '.join(KINDS)}")
        names = [*KINDS[kind], *(n for n in OPTIONAL.get(kind, ()) if n in stored)]
        return cls(kind, {name: decode_array(stored[name]) for name in names})


def _make(kind: str, first: Tensor | np.ndarray, second: Tensor | np.ndarray | int) -> dict[str, Any]:
    a = _array(first)
    b = np.broadcast_to(_array(second), a.shape)
    return Outcomes(kind, dict(zip(KINDS[kind], (a, b)))).to_json()


def mean_outcomes(correct: Tensor | np.ndarray, total: Tensor | np.ndarray | int) -> dict[str, Any]:
    """Stored outcomes of a mean of per-sample fractions: [n] correct counts of [n] (or one) totals."""
    return _make("mean", correct, total)


def ratio_outcomes(num: Tensor | np.ndarray, den: Tensor | np.ndarray) -> dict[str, Any]:
    """Stored outcomes of a ratio of sums: [n] numerators and [n] denominators."""
    return _make("ratio", num, den)


def iou_outcomes(intersection: Tensor | np.ndarray, union: Tensor | np.ndarray) -> dict[str, Any]:
    """Stored outcomes of a mean IoU: [n, K] per-image, per-class intersections and unions."""
    return _make("iou", intersection, union)


def segment_outcomes(kind: str, segments: np.ndarray, shared: np.ndarray, gt_area: np.ndarray,
                     pred_area: np.ndarray, sequences: np.ndarray | None = None) -> dict[str, Any]:
    """Stored outcomes of one statistic of EventSAM's segment metric (``kind``, one of
    :data:`SEGMENT_KINDS`): [n] ground-truth segments per test image, then [G] per-segment pixels
    shared with the matched prediction, ground-truth areas and matched predicted areas, and the
    [n] sequence ids (non-negative integers) of the images for EventSAM's per-sequence average."""
    if kind not in SEGMENT_KINDS:
        raise ValueError(f"unknown segment outcome kind {kind!r}; known: {', '.join(SEGMENT_KINDS)}")
    arrays = dict(zip(SEGMENT_ARRAYS, (_array(segments), _array(shared), _array(gt_area), _array(pred_area))))
    if sequences is not None:
        arrays[SEQUENCES] = _array(sequences)
    return Outcomes(kind, arrays).to_json()


def shared_outcomes(kind: str, arrays_of: str) -> dict[str, Any]:
    """Stored outcomes of kind ``kind`` that use the arrays stored with metric ``arrays_of`` of the
    same task (the statistics of EventSAM's segment metric share one set of per-segment counts)."""
    if kind not in KINDS:
        raise ValueError(f"unknown outcome kind {kind!r}; known: {', '.join(KINDS)}")
    return {"kind": kind, "arrays_of": arrays_of}


def outcomes_of(extras: Mapping[str, Any], task_metrics: Mapping[str, Mapping[str, Any]] | None = None
                ) -> Outcomes | None:
    """The outcomes a metric's ``extras`` hold, or None. Outcomes stored as :func:`shared_outcomes`
    take their arrays from the extras of metric ``arrays_of`` in ``task_metrics`` (the extras of the
    same record's metrics of the same task, by name); None without them."""
    stored = extras.get(KEY)
    if not stored:
        return None
    if "arrays_of" in stored:
        source = (task_metrics or {}).get(stored["arrays_of"], {}).get(KEY)
        if not source or "arrays_of" in source:
            return None
        arrays = Outcomes.from_json(source).arrays
        if not set(KINDS.get(stored["kind"], ())) <= set(arrays) <= {*KINDS.get(stored["kind"], ()),
                                                                   *OPTIONAL.get(stored["kind"], ())}:
            raise BenchbaseError(f"stored outcomes of kind {stored['kind']!r} cannot use the arrays of "
                                 f"{stored['arrays_of']!r} (kind {source.get('kind')!r})")
        return Outcomes(stored["kind"], arrays)
    return Outcomes.from_json(stored)


def task_metrics(metrics: Iterable[Any], task: str | None) -> dict[str, Mapping[str, Any]]:
    """The extras of ``metrics`` (a record's :class:`~benchbase.components.Metric` objects) of
    ``task``, by metric name: what :func:`outcomes_of` resolves shared outcomes against."""
    return {m.name: m.extras for m in metrics if m.extras.get("task") == task}

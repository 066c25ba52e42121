"""EventSAM's segment metric on hand-drawn masks and label maps (expected values worked out by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchbase.outcomes import Outcomes
from benchbase.evaluation.segments import SegmentMetricAccumulator, connected_segments, segment_metric, segment_ids


def box(rows: slice, cols: slice, shape: tuple[int, int] = (4, 8)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


# a 4x8 canvas: A = the left 4x4 square (16 px), B = the top-right 2x4 rectangle (8 px)
A = box(slice(0, 4), slice(0, 4))
B = box(slice(0, 2), slice(4, 8))


def test_perfect_prediction_scores_one_everywhere():
    result = segment_metric([B, A], [A, B])
    assert result == {"mIoU": 1.0, "aIoU": 1.0, "precision": 1.0, "recall": 1.0, "count": 2}


def test_over_segmentation_halves_iou_and_recall_but_keeps_precision():
    left, right = box(slice(0, 4), slice(0, 2)), box(slice(0, 4), slice(2, 4))  # A cut in two 8 px halves
    result = segment_metric([left, right, B], [A, B])
    # A: best IoU 8/16 (a half), precision 8/8, recall 8/16; B: exact
    assert result["mIoU"] == pytest.approx((0.5 + 1) / 2)
    assert result["aIoU"] == pytest.approx((16 * 0.5 + 8 * 1) / 24)
    assert result["precision"] == pytest.approx(1.0)
    assert result["recall"] == pytest.approx((0.5 + 1) / 2)
    assert result["count"] == 2


def test_under_segmentation_keeps_recall_but_loses_precision():
    merged = A | B  # 24 px
    result = segment_metric([merged], [A, B])
    # A: IoU 16/24, precision 16/24, recall 1; B: IoU 8/24, precision 8/24, recall 1
    assert result["mIoU"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert result["aIoU"] == pytest.approx((16 * 2 / 3 + 8 * 1 / 3) / 24)
    assert result["precision"] == pytest.approx(0.5)
    assert result["recall"] == pytest.approx(1.0)


def test_no_prediction_or_no_ground_truth():
    assert segment_metric([], [A, B]) == {"mIoU": 0.0, "aIoU": 0.0, "precision": 0.0, "recall": 0.0, "count": 2}
    empty = segment_metric([A], [])
    assert empty["count"] == 0 and np.isnan(empty["mIoU"])
    with pytest.raises(ValueError, match="empty"):
        segment_metric([A], [A, np.zeros((4, 8), dtype=bool)])


def test_connected_segments_split_disjoint_blobs_of_one_class():
    label = np.zeros((5, 5), dtype=np.int64)
    label[0:2, 0:2] = 3
    label[3:5, 3:5] = 3  # a second blob of class 3, apart from the first
    segments = connected_segments(label)
    assert len(segments) == 3  # background, and the two blobs
    assert [int(s.sum()) for s in segments] == [17, 4, 4]
    assert segments[1][0, 0] and segments[2][4, 4]
    assert np.logical_or.reduce(segments).all() and sum(s.astype(int) for s in segments).max() == 1


def test_connectivity_decides_whether_diagonal_neighbours_join():
    label = torch.tensor([[1, 0], [0, 1]])  # tensors are accepted as well
    assert len(connected_segments(label, connectivity=8)) == 2  # one class-0 and one class-1 segment
    assert len(connected_segments(label, connectivity=4)) == 4
    with pytest.raises(ValueError, match="connectivity"):
        connected_segments(label, connectivity=6)


def test_ignored_pixels_and_small_regions_belong_to_no_segment():
    label = np.array([[1, 1, 255, 2], [1, 1, 255, 2]])
    ids, count = segment_ids(label, ignore_index=255)
    assert count == 2 and (ids[:, 2] == -1).all()
    ids, count = segment_ids(label, ignore_index=255, min_area=3)  # the 2-pixel class-2 strip goes
    assert count == 1 and (ids[:, :2] == 0).all() and (ids[:, 2:] == -1).all()


def gt_map() -> np.ndarray:
    """A (class 1), B (class 2) and an 8-pixel background corner (class 0)."""
    label = np.zeros((4, 8), dtype=np.int64)
    label[A], label[B] = 1, 2
    return label


def test_accumulator_averages_each_image_then_each_sequence_as_released():
    """EventSAM's calculate_metric.py: each image's mean over its ground-truth segments (aIoU weighted
    by their areas), then the mean over a sequence's images, then over sequences."""
    flat = np.zeros((4, 8), dtype=np.int64)
    under = np.where(A | B, 1, 0)  # A and B merged into one predicted region
    accumulator = SegmentMetricAccumulator(gt_min_area=1, pred_min_area=1)
    accumulator.update(flat, flat)  # one segment, predicted exactly: every statistic 1
    accumulator.update(torch.as_tensor(under), gt_map())  # corner (exact, 1), A (16/24), B (8/24)
    result = accumulator.compute()
    assert result["count"] == 4 and result["sequences"] == 2  # an image without a sequence is its own
    assert result["mIoU"] == pytest.approx((1 + (1 + 2 / 3 + 1 / 3) / 3) / 2)  # 5/6, not the pooled 3/4
    assert result["aIoU"] == pytest.approx((1 + (8 * 1 + 16 * 2 / 3 + 8 / 3) / 32) / 2)
    assert result["precision"] == pytest.approx((1 + (1 + 2 / 3 + 1 / 3) / 3) / 2)
    assert result["recall"] == pytest.approx(1.0)
    grouped = SegmentMetricAccumulator(gt_min_area=1, pred_min_area=1)
    grouped.update(flat, flat, sequence="a")
    grouped.update(under, gt_map(), sequence="a")
    grouped.update(flat, flat, sequence="b")
    assert grouped.compute()["mIoU"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)  # sequence a 5/6, b 1
    assert grouped.compute()["sequences"] == 2
    # a predicted segment under pred_min_area (the 8-pixel corner here; EventSAM's 12 by default) is
    # dropped: the corner's ground truth is left without a match
    small = SegmentMetricAccumulator(gt_min_area=1, pred_min_area=9)
    small.update(under, gt_map())
    assert small.compute()["mIoU"] == pytest.approx((0 + 2 / 3 + 1 / 3) / 3)
    painted = SegmentMetricAccumulator(gt_min_area=1, pred_min_area=9)
    painted.update_segments(under, gt_map())  # the same as given segment ids: 0 the corner, 1 A and B
    assert painted.compute()["mIoU"] == pytest.approx((0 + 2 / 3 + 1 / 3) / 3)


def test_accumulator_matches_the_mask_function_on_one_image():
    pred = gt_map()
    pred[0:4, 1] = 2  # a wrong column that splits A and joins B's class
    accumulator = SegmentMetricAccumulator(gt_min_area=1, pred_min_area=1)
    accumulator.update(pred, gt_map())
    expected = segment_metric(connected_segments(pred), connected_segments(gt_map()))
    assert accumulator.compute() == pytest.approx({**expected, "sequences": 1})


def test_accumulator_leaves_out_ignored_pixels_and_small_ground_truth():
    gt = np.array([[1, 1, 255, 2], [1, 1, 255, 2]])
    pred = np.array([[1, 1, 1, 2], [1, 1, 1, 2]])  # class 1 spills onto unlabelled pixels only
    accumulator = SegmentMetricAccumulator(ignore_index=255, gt_min_area=1, pred_min_area=1)
    accumulator.update(pred, gt)
    assert accumulator.compute() == {"mIoU": 1.0, "aIoU": 1.0, "precision": 1.0, "recall": 1.0, "count": 2,
                                     "sequences": 1}
    default = SegmentMetricAccumulator(ignore_index=255)  # EventSAM's 12-pixel minimum drops both
    default.update(pred, gt)
    assert default.compute()["count"] == 0
    with pytest.raises(ValueError, match="shape"):
        default.update(pred[:, :3], gt)


def test_stored_segment_outcomes_reproduce_every_statistic_and_keep_split_order():
    accumulator = SegmentMetricAccumulator(gt_min_area=1, pred_min_area=1)
    flat = np.zeros((4, 8), dtype=np.int64)
    pred = gt_map()
    pred[0:4, 1] = 2
    accumulator.update(pred, gt_map())  # split index 1
    accumulator.update(flat, flat)  # split index 0
    accumulator.update_segments(np.full((4, 8), -1), np.full((4, 8), 7))  # index 2: no predicted segment at all
    result = accumulator.compute()
    for key in ("mIoU", "aIoU", "precision", "recall"):
        stored = Outcomes.from_json(accumulator.outcomes(key, order=[1, 0, 2]))
        assert stored.value() == pytest.approx(100 * result[key])
        assert stored.n == 3 and stored.arrays["segments"].tolist() == [1, len(connected_segments(gt_map())), 1]
    # the unmatched ground-truth segment of image 2 shares nothing with a match of area 0
    recall = Outcomes.from_json(accumulator.outcomes("recall"))
    assert recall.arrays["shared"][-1] == 0 and recall.arrays["pred_area"][-1] == 0


def test_segment_outcomes_average_per_sequence_under_bootstrap_weights_and_old_records_stay_pooled():
    accumulator = SegmentMetricAccumulator(gt_min_area=1, pred_min_area=1)
    flat = np.zeros((4, 8), dtype=np.int64)
    accumulator.update(flat, flat)  # image 0: mIoU 1
    accumulator.update(np.where(A | B, 1, 0), gt_map())  # image 1: mIoU 2/3 (corner 1, A 2/3, B 1/3)
    stored = accumulator.outcomes("mIoU")
    resampled = Outcomes.from_json(stored).value(np.array([[1, 1], [2, 0], [0, 3]]))  # [R, n] draws of images
    np.testing.assert_allclose(resampled, [100 * 5 / 6, 100.0, 100 * 2 / 3])
    before = {k: v for k, v in stored.items() if k != "sequences"}  # a record stored before sequences were kept
    assert Outcomes.from_json(before).value() == pytest.approx(100 * (1 + 1 + 2 / 3 + 1 / 3) / 4)  # pooled
    assert Outcomes.from_json(stored).to_json() == stored

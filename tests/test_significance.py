"""Floors, per-sample outcomes, paired tests, ranks and below-floor marks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchbase.components import Metric
from benchbase.errors import NotApplicable
from benchbase.floors import PixelModel
from benchbase.leaderboard import BELOW_MARK, BELOW_SUFFIX, RANK_SUFFIX, build_table, markdown_page
from benchbase.outcomes import (Outcomes, iou_outcomes, mean_outcomes, outcomes_of, ratio_outcomes, segment_outcomes,
                                shared_outcomes, task_metrics)
from benchbase.results import RunRecord
from benchbase.significance import (
    BOOTSTRAP, BOOTSTRAP_SEED, CACHED_WEIGHTS_MAX, _seeded_weights, compare_rows, holm, paired_test, ranks,
)

from conftest import tensor_images


def test_pixel_floor_features_equal_a_hand_computation():
    images = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    model = PixelModel(in_chans=1, image_size=3)
    assert torch.equal(model.features(images, "cls+attn"), images.view(2, 9))  # the flattened image
    grid = model.patch_grid(images)  # [2, 9, 3, 3]: each pixel's 3x3 neighbourhood, zero-padded
    assert grid.shape == (2, 9, 3, 3) and model.token_width == 9
    # the centre pixel of image 0 sees the whole image; the corner (0, 0) sees zeros above and left
    assert grid[0, :, 1, 1].tolist() == list(range(9))
    assert grid[0, :, 0, 0].tolist() == [0, 0, 0, 0, 0, 1, 0, 3, 4]
    # a student reading one modality of stacked images: the pixels floor reads the same channels
    stacked = torch.cat([images, 10 + images], dim=1)
    assert torch.equal(PixelModel(1, 3, (1, 2)).features(stacked, "cls"), (10 + images).view(2, 9))
    with pytest.raises(NotApplicable):
        model.export()  # fine-tuning does not apply: the cell stays empty


def test_outcomes_round_trip_and_recompute_the_metric():
    correct = np.array([3, 5, 0, 75])
    stored = Outcomes.from_json(mean_outcomes(correct, 75))
    assert stored.arrays["correct"].tolist() == [3, 5, 0, 75] and stored.n == 4
    assert stored.value() == pytest.approx(100 * np.mean(correct / 75))
    ratio = Outcomes.from_json(ratio_outcomes(torch.tensor([1, 3]), torch.tensor([2, 4])))
    assert ratio.value() == pytest.approx(100 * 4 / 6)
    # mIoU from per-image counts equals the IoU of the summed counts; a class absent everywhere is left out
    iou = Outcomes.from_json(iou_outcomes(np.array([[1, 0, 0], [2, 1, 0]]), np.array([[2, 1, 0], [2, 3, 0]])))
    assert iou.value() == pytest.approx(100 * (3 / 4 + 1 / 4) / 2)


def _mean_rows(**rows: list[list[int]]) -> dict[str, dict[int, Outcomes]]:
    """Rows of few-shot outcomes: per seed, each episode's correct queries out of 10."""
    return {name: {seed: Outcomes.from_json(mean_outcomes(np.array(c), 10)) for seed, c in enumerate(seeds)}
            for name, seeds in rows.items()}


def test_identical_rows_tie_and_a_row_better_on_every_episode_wins():
    rng = np.random.default_rng(0)
    base = [rng.integers(2, 8, size=200).tolist() for _ in range(2)]
    better = [[c + 2 for c in seed] for seed in base]
    rows = _mean_rows(a=base, b=base, c=better)
    delta, p = paired_test(rows["a"], rows["b"])
    assert delta == 0 and p == 1.0
    delta, p = paired_test(rows["c"], rows["a"])
    assert delta == pytest.approx(20.0) and p < 1e-12  # +2 of 10 queries on every episode
    comparisons = compare_rows(rows)
    assert ranks(rows, comparisons) == {"c": 1, "a": 2, "b": 2}
    assert {(c.a, c.b) for c in comparisons if c.significant} == {("c", "a"), ("c", "b")}


def test_a_small_noisy_difference_is_not_significant():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 11, size=50)
    b = np.clip(a + rng.choice([-1, 0, 1], size=50, p=[0.3, 0.35, 0.35]), 0, 10)
    rows = _mean_rows(a=[a.tolist()], b=[b.tolist()])
    assert ranks(rows, compare_rows(rows)) == {"a": 1, "b": 1}


def test_paired_bootstrap_on_miou():
    truth = np.tile(np.array([[50, 50]]), (30, 1))  # 30 images, 2 classes
    good = Outcomes.from_json(iou_outcomes(truth - 5, truth + 5))
    bad = Outcomes.from_json(iou_outcomes(truth - 20, truth + 20))
    delta, p = paired_test({0: good}, {0: bad})
    assert delta == pytest.approx(good.value() - bad.value()) and p < 0.01
    assert paired_test({0: good}, {0: good}) == (0.0, 1.0)


def test_the_default_bootstrap_draws_once_what_a_fresh_seeded_generator_draws():
    """A table's many default-seeded tests share one draw per sample sizes: the same counts, so the
    same p-values, as a generator seeded with BOOTSTRAP_SEED for each test."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    fresh = [rng.multinomial(n, np.full(n, 1 / n), size=BOOTSTRAP) for n in (30, 12)]
    cached = _seeded_weights((30, 12))
    assert all(np.array_equal(f, c) for f, c in zip(fresh, cached)) and cached[0].sum(axis=1).tolist() == [30] * BOOTSTRAP
    assert _seeded_weights((30, 12))[0] is cached[0]  # drawn once
    truth = np.tile(np.array([[50, 50]]), (30, 1))
    a, b = (Outcomes.from_json(iou_outcomes(truth - k, truth + k)) for k in (5, 8))
    assert paired_test({0: a}, {0: b}) == paired_test({0: a}, {0: b}, np.random.default_rng(BOOTSTRAP_SEED))
    big = CACHED_WEIGHTS_MAX + 1  # too large to keep: drawn afresh, the same counts
    assert np.array_equal(_seeded_weights((big,))[0][:2], np.random.default_rng(BOOTSTRAP_SEED).multinomial(
        big, np.full(big, 1 / big), size=BOOTSTRAP)[:2])


def test_paired_bootstrap_on_the_segment_metric_resamples_images():
    rng = np.random.default_rng(0)
    segments = rng.integers(1, 6, size=40)  # 40 images with 1-5 ground-truth segments each
    gt = rng.integers(20, 200, size=segments.sum())
    matched = gt.copy()

    def rows(overlap: float) -> dict[int, Outcomes]:
        shared = (gt * overlap).astype(int)
        return {0: Outcomes.from_json(segment_outcomes("segment_iou", segments, shared, gt, matched))}

    good, bad = rows(0.8), rows(0.6)
    assert good[0].value() == pytest.approx(100 * np.mean((gt * 0.8).astype(int) / (2 * gt - (gt * 0.8).astype(int))))
    delta, p = paired_test(good, bad)
    assert delta == pytest.approx(good[0].value() - bad[0].value()) and p < 1e-6
    assert paired_test(good, good) == (0.0, 1.0)
    # the area-weighted statistic weighs a large segment more than a small one
    aiou = Outcomes.from_json(segment_outcomes("segment_aiou", [2], [10, 0], [10, 30], [10, 0]))
    assert aiou.value() == pytest.approx(100 * 10 / 40)
    assert Outcomes.from_json(segment_outcomes("segment_iou", [2], [10, 0], [10, 30], [10, 0])).value() == 50.0


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def _record(role: str, method: str, value: float, ci: float, correct: list[int] | None = None) -> RunRecord:
    extras = {"task": "fewshot"}
    if correct is not None:
        extras["outcomes"] = mean_outcomes(np.array(correct), 10)
    metric = Metric("5way-1shot", value, 100, "5-way 1-shot, seed 0", ci95=ci, extras=extras)
    return RunRecord(config_hash=f"{role}-{method}", suite="s", method=method, teacher="t", student="s",
                     dataset="d", seed=0, status="done", metrics=[metric], config={}, role=role)


def test_marks_appear_exactly_where_a_learned_cell_is_not_above_the_best_floor():
    records = [
        _record("teacher", "teacher", 80.0, 2.0),
        _record("floor", "pixels", 60.0, 1.0),
        _record("floor", "random_init", 40.0, 1.0),
        _record("method", "above", 63.0, 2.0),  # 61 > 60: above the best floor
        _record("method", "touching", 62.0, 2.0),  # 60 is not above 60
        _record("method", "below", 50.0, 1.0),
    ]
    df = build_table(records)
    marked = dict(zip(df["method"], df["fewshot/5way-1shot" + BELOW_SUFFIX]))
    assert marked == {"teacher": False, "pixels": False, "random_init": False, "above": False,
                      "touching": True, "below": True}
    page = markdown_page(["# s", ""], records, df, [], "test")
    cells = {line.split("|")[2].strip(): line.split("|")[3].strip() for line in page.splitlines()
             if line.startswith("| ") and "method" not in line.split("|")[2]}
    assert sorted(name for name, cell in cells.items() if cell.endswith(BELOW_MARK)) == ["below", "touching"]
    assert "- `fewshot/5way-1shot`: yes (teacher 80.0, best floor pixels 60.0)" in page


def test_a_teacher_below_its_floors_is_said_on_the_page_and_ranks_come_from_outcomes():
    episodes = 40
    records = [
        _record("teacher", "teacher", 30.0, 1.0, [3] * episodes),
        _record("floor", "pixels", 70.0, 1.0, [7] * episodes),
        _record("method", "m", 30.0, 1.0, [3] * episodes),
    ]
    df = build_table(records)
    assert dict(zip(df["method"], df["fewshot/5way-1shot" + RANK_SUFFIX])) == {"teacher": 2, "pixels": 1, "m": 2}
    page = markdown_page(["# s", ""], records, df, [], "test")
    assert "`fewshot/5way-1shot`: **no" in page and "30.0 ± 1.0 (#2) ▼" in page
    assert "pixels > teacher" in page and "Holm" in page


def test_rows_without_stored_outcomes_get_no_rank():
    df = build_table([_record("teacher", "teacher", 80.0, 2.0), _record("method", "m", 70.0, 2.0)])
    assert "fewshot/5way-1shot" + RANK_SUFFIX not in df and not df.attrs["comparisons"]


def test_a_column_without_outcomes_is_named_unranked_on_the_page():
    episodes = 40
    records = [
        _record("floor", "pixels", 70.0, 1.0, [7] * episodes),
        _record("method", "m", 30.0, 1.0, [3] * episodes),
    ]
    for record, value in zip(records, (20.0, 25.0)):  # a second metric of the task, stored without outcomes
        record.metrics.append(Metric("seg_mIoU", value, 100, "segments", ci95=1.0, extras={"task": "fewshot"}))
    df = build_table(records)
    assert list(df.attrs["comparisons"]) == ["fewshot/5way-1shot"]
    page = markdown_page(["# s", ""], records, df, [], "test")
    assert "Unranked (their evaluator stores no per-sample outcomes yet, so no paired test): `fewshot/seg_mIoU`." in page


def test_evaluators_store_outcomes_that_reproduce_their_metrics(tmp_path):
    from benchbase.components import DataBundle
    from benchbase.data.scenes import TensorSegmentationImages
    from benchbase.evaluation.classification import LinearProbe
    from benchbase.evaluation.segmentation import SegmentationProbe

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(10)
    images = torch.randn(30, 1, 4, 4, generator=generator) + labels.view(-1, 1, 1, 1).float()
    data = DataBundle("toy", {"train": tensor_images(images, labels), "test": tensor_images(images, labels)},
                      image_size=4, in_chans=1, num_classes=3)
    model = PixelModel(1, 4)
    (top1,) = LinearProbe().evaluate(model, data, torch.device("cpu"))
    assert outcomes_of(top1.extras).value() == pytest.approx(top1.value)

    maps = (images[:, 0] > 0.5).long()
    seg = DataBundle("toyseg", {"train": TensorSegmentationImages(images, maps, ["0", "1"]),
                                "test": TensorSegmentationImages(images, maps, ["0", "1"])},
                     image_size=4, in_chans=1, num_classes=2)
    metrics = SegmentationProbe(epochs=2, batch_size=8, segment_metric=True).evaluate(model, seg, torch.device("cpu"))
    assert [m.name for m in metrics] == ["mIoU", "pixel_acc", "seg_mIoU", "seg_aIoU", "seg_precision", "seg_recall"]
    siblings = task_metrics(metrics, None)
    for metric in metrics:  # EventSAM's segment metric included
        assert outcomes_of(metric.extras, siblings).value() == pytest.approx(metric.value)
        assert outcomes_of(metric.extras, siblings).n == 30 and not math.isnan(metric.value)
    # the segment metric's statistics share one set of arrays: stored once, with seg_mIoU
    assert [m.extras["outcomes"].get("arrays_of") for m in metrics[2:]] == [None, "seg_mIoU", "seg_mIoU", "seg_mIoU"]
    assert outcomes_of(metrics[3].extras) is None  # without the record's other metrics, nothing to read


def test_a_single_seed_miou_gets_a_bootstrap_interval_from_its_outcomes():
    rng = np.random.default_rng(0)
    union = rng.integers(40, 60, size=(50, 3))
    intersection = (union * rng.uniform(0.3, 0.9, size=(50, 3))).astype(int)
    outcomes = Outcomes.from_json(iou_outcomes(intersection, union))
    metric = Metric("mIoU", outcomes.value(), 50, "seg", extras={"task": "seg", "outcomes": iou_outcomes(intersection, union)})
    record = RunRecord(config_hash="h", suite="s", method="m", teacher="t", student="s", dataset="d", seed=0,
                       status="done", metrics=[metric], config={})
    ci = float(build_table([record])["seg/mIoU_ci95"].iloc[0])
    # about the normal-theory half-width of a per-image mean of IoU-like ratios: a few points, not zero
    per_image = 100 * intersection.sum(1) / union.sum(1)
    assert 0.5 * 1.96 * per_image.std() / np.sqrt(50) < ci < 2 * 1.96 * per_image.std() / np.sqrt(50)


def test_shared_segment_outcomes_are_ranked_and_give_single_seed_intervals():
    rng = np.random.default_rng(0)
    segments = rng.integers(1, 4, size=40)
    gt = rng.integers(20, 200, size=segments.sum())

    def record(method: str, overlap: float) -> RunRecord:
        shared = (gt * overlap).astype(int)
        full = segment_outcomes("segment_iou", segments, shared, gt, gt)
        metrics = [Metric("seg_mIoU", Outcomes.from_json(full).value(), 1, "seg", extras={"task": "seg", "outcomes": full})]
        aiou = Outcomes("segment_aiou", Outcomes.from_json(full).arrays).value()
        metrics.append(Metric("seg_aIoU", aiou, 1, "seg", extras={"task": "seg", "outcomes": shared_outcomes("segment_aiou", "seg_mIoU")}))
        return RunRecord(config_hash=method, suite="s", method=method, teacher="t", student="s", dataset="d", seed=0,
                         status="done", metrics=metrics, config={}, role="method")

    df = build_table([record("good", 0.8), record("bad", 0.6)])
    ranked = dict(zip(df["method"], df["seg/seg_aIoU" + RANK_SUFFIX]))
    assert ranked == {"good": 1, "bad": 2}
    assert (df["seg/seg_aIoU_ci95"] > 0).all()  # a bootstrap interval from the arrays stored with seg_mIoU


def test_compare_rows_reuses_each_runs_bootstrap_values_and_changes_no_result(monkeypatch):
    """compare_rows computes each run's resampled values once for all its pairs (a memo); every
    pair's delta and p equal the same test run alone, which resamples afresh."""
    rng = np.random.default_rng(3)

    def run(hit_rate: float) -> Outcomes:
        inter = rng.binomial(20, hit_rate, size=(40, 4)).astype(float)
        return Outcomes("iou", {"intersection": inter, "union": np.full((40, 4), 20.0)})

    rows = {name: {0: run(p), 1: run(p)} for name, p in (("a", 0.5), ("b", 0.55), ("c", 0.7), ("d", 0.5))}
    calls = []
    original = Outcomes.value

    def counted(self, weights=None):
        calls.append(weights is not None)
        return original(self, weights)

    monkeypatch.setattr(Outcomes, "value", counted)
    compared = compare_rows(rows)
    monkeypatch.undo()
    assert sum(calls) == 8  # 4 rows x 2 seeds resampled once each, not once per pair (24)
    for c in compared:
        delta, p = paired_test(rows[c.a], rows[c.b])
        assert (c.delta, c.p) == (delta, p)

"""Semantic segmentation: confusion-matrix mIoU and the segmentation probe on the digit scenes."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from benchbase.capture import Tap
from benchbase.components import DataBundle, Student, Teacher
from benchbase.data.scenes import TensorSegmentationImages, load_digit_scenes
from benchbase.errors import BenchbaseError
from benchbase.evaluation import segmentation
from benchbase.evaluation.segmentation import (
    SegmentationProbe,
    confusion_matrix,
    iou_from_confusion,
    pixel_accuracy,
    upsampled_groups,
)

CPU = torch.device("cpu")


def test_confusion_matrix_and_iou_by_hand():
    target = torch.tensor([[0, 0, 1, 255], [1, 2, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 3], [1, 2, 0, 0]])  # class 3 is predicted only on an ignored pixel
    cm = confusion_matrix(pred, target, num_classes=4, ignore_index=255)
    # kept (true, predicted) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    per_class, miou = iou_from_confusion(cm)
    # IoU = diagonal / (row + column - diagonal): 1/(2+2-1), 2/(2+3-2), 1/(2+1-1); class 3 absent
    assert per_class[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(per_class[3])
    assert miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert pixel_accuracy(cm) == pytest.approx(4 / 6)


def test_a_class_in_ground_truth_but_never_predicted_counts_as_zero():
    cm = confusion_matrix(torch.tensor([0, 0, 0]), torch.tensor([0, 0, 1]), num_classes=3, ignore_index=None)
    per_class, miou = iou_from_confusion(cm)
    assert per_class[:2].tolist() == pytest.approx([2 / 3, 0.0]) and math.isnan(per_class[2])
    assert miou == pytest.approx(1 / 3)


def test_perfect_prediction_gives_a_diagonal_confusion_matrix():
    target = torch.randint(5, (3, 7, 9), generator=torch.Generator().manual_seed(0))
    cm = confusion_matrix(target, target, num_classes=5, ignore_index=None)
    assert torch.equal(cm, torch.diag(torch.bincount(target.flatten(), minlength=5)))
    assert iou_from_confusion(cm)[1] == 1.0 and pixel_accuracy(cm) == 1.0


def test_labels_outside_the_classes_are_reported():
    with pytest.raises(BenchbaseError, match="ignore_index"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), num_classes=3, ignore_index=255)


def test_logits_are_upsampled_to_each_label_size():
    logits = torch.randn(2, 3, 4, 4)
    groups = list(upsampled_groups(logits, [torch.zeros(6, 10, dtype=torch.long)] * 2))
    assert len(groups) == 1 and groups[0][0].shape == (2, 3, 6, 10) and groups[0][1].shape == (2, 6, 10)
    groups = list(upsampled_groups(logits, [torch.zeros(6, 10, dtype=torch.long), torch.zeros(4, 8, dtype=torch.long)]))
    assert [tuple(g.shape) for g, _ in groups] == [(1, 3, 6, 10), (1, 3, 4, 8)]


def tiny_student(seed: int = 0) -> Student:
    torch.manual_seed(seed)
    return Student(
        timm.create_model(
            "vit_tiny_patch16_224", img_size=32, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2,
            num_classes=0,
        )
    )


@pytest.fixture(scope="module")
def scenes() -> DataBundle:
    return load_digit_scenes(n_train=160, n_test=40, seed=0)


def test_patch_grid_follows_the_patch_grid():
    student = tiny_student()
    images = torch.randn(2, 1, 32, 32)
    features = student.patch_grid(images)
    tokens = student.run(images, [Tap("tokens")])[Tap("tokens")]  # [2, 1 + 64, 32]
    assert features.shape == (2, 32, 8, 8)
    assert torch.equal(features[:, :, 2, 5], tokens[:, 1 + 2 * 8 + 5])  # row-major after the class token


def test_linear_probe_beats_predicting_background_everywhere(scenes):
    test_labels = scenes.split("test").labels
    constant = confusion_matrix(torch.zeros_like(test_labels), test_labels, 11, None)
    constant_iou, constant_miou = iou_from_confusion(constant)
    student = tiny_student()
    before = [p.clone() for p in student.parameters()]
    state = torch.random.get_rng_state()
    miou, accuracy = SegmentationProbe(epochs=8, lr=0.03).evaluate(student, scenes, CPU)
    assert torch.equal(torch.random.get_rng_state(), state)  # global random state untouched
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))  # student frozen
    assert student.training  # its mode restored
    assert miou.name == "mIoU" and accuracy.name == "pixel_acc"
    assert miou.n == accuracy.n == 40 * 32 * 32 and miou.ci95 is None
    assert miou.value > 1.3 * 100 * constant_miou  # about 11 vs 7.3
    per_class = miou.extras["per_class_iou"]
    assert list(per_class) == ["background"] + [str(d) for d in range(10)]
    assert per_class["background"] > 100 * float(constant_iou[0]) + 8  # about 93 vs 81
    assert miou.value == pytest.approx(sum(per_class.values()) / 11)
    assert miou.extras["pixel_accuracy"] == accuracy.value
    assert "mIoU from a confusion matrix accumulated over the whole split" in miou.protocol
    assert "linear probe" in miou.protocol and "8 epochs" in miou.protocol and "ignore label none" in miou.protocol


def test_probe_repeats_for_a_seed_and_changes_with_it(scenes):
    student = tiny_student()
    first = SegmentationProbe(epochs=2, seed=1).evaluate(student, scenes, CPU)
    again = SegmentationProbe(epochs=2, seed=1).evaluate(student, scenes, CPU)
    other = SegmentationProbe(epochs=2, seed=2).evaluate(student, scenes, CPU)
    assert [m.value for m in first] == [m.value for m in again]
    assert first[0].extras == again[0].extras
    assert first[0].value != other[0].value


def test_features_per_batch_give_the_cached_result(scenes, monkeypatch):
    student = tiny_student()
    cached = SegmentationProbe(epochs=2).evaluate(student, scenes, CPU)
    monkeypatch.setattr(segmentation, "FEATURE_CACHE_ELEMENTS", 0)  # too large to cache: run the student per batch
    per_batch = SegmentationProbe(epochs=2).evaluate(student, scenes, CPU)
    assert [m.value for m in per_batch] == pytest.approx([m.value for m in cached], abs=0.05)


def test_decoder_head_fine_tunes_a_copy_and_reports_segment_metrics(scenes):
    teacher = Teacher(tiny_student().model)  # frozen weights are fine-tuned in a copy
    before = [p.clone() for p in teacher.parameters()]
    metrics = SegmentationProbe(head="decoder", epochs=1, batch_size=32, segment_metric=True).evaluate(
        teacher, scenes, CPU
    )
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert [m.name for m in metrics] == ["mIoU", "pixel_acc", "seg_mIoU", "seg_aIoU", "seg_precision", "seg_recall"]
    assert all(0 <= m.value <= 100 for m in metrics)
    segments = metrics[2]
    assert segments.n == metrics[3].n > 40  # at least one ground-truth segment per test scene
    assert "fine-tuned decoder" in segments.protocol and "EventSAM segment metric" in segments.protocol
    # EventSAM's released averaging: each scene stands alone, so one sequence per test scene
    assert "then over the 40 sequences" in segments.protocol and "EventSAM segment metric as released" in segments.protocol


def test_ignored_pixels_and_non_square_label_maps():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(12, 1, 32, 32, generator=generator)
    labels = (images[:, 0, ::2, :] > 0).long()  # [12, 16, 32]: non-square maps of half the rows
    labels[:, :, :4] = 9  # unlabelled band
    split = TensorSegmentationImages(images, labels, ["dark", "bright"])
    data = DataBundle("halves", {"train": split, "test": split}, image_size=32, in_chans=1, num_classes=2,
                      ignore_index=9)
    miou, accuracy = SegmentationProbe(epochs=1, batch_size=5).evaluate(tiny_student(), data, CPU)
    assert miou.n == 12 * 16 * 28 and "ignore label 9" in miou.protocol
    assert set(miou.extras["per_class_iou"]) == {"dark", "bright"}


def test_bad_probe_settings_are_reported(scenes):
    with pytest.raises(BenchbaseError, match="segmentation head"):
        SegmentationProbe(head="mlp")
    with pytest.raises(BenchbaseError, match="epochs"):
        SegmentationProbe(epochs=0)
    with pytest.raises(BenchbaseError, match="split"):
        SegmentationProbe(test_split="val").evaluate(tiny_student(), scenes, CPU)


def test_upernet_reads_four_blocks_as_a_pyramid_and_fine_tunes_a_copy(scenes):
    """BEiT/MAE's UperNet on a ViT: four block outputs (by default the last block of each quarter of
    the depth) rescaled 4x, 2x, 1x and 0.5x, logits at 4x the patch grid; every head parameter and the
    backbone train; a tiny fine-tune learns more of the digit scenes than a map of background alone."""
    from benchbase.evaluation.upernet import UperNetHead, quarter_blocks

    assert quarter_blocks(12) == [2, 5, 8, 11] and quarter_blocks(4) == [0, 1, 2, 3] and quarter_blocks(2) == [0, 0, 0, 1]
    student = tiny_student()
    probe = SegmentationProbe(head="upernet", blocks=[0, 1, 1, 1], channels=16)
    images = torch.randn(2, 1, 32, 32)
    grids = probe.inputs(student, images)
    blocks = student.run(images, [Tap("block", 0), Tap("block", 1)])
    assert len(grids) == 4 and all(g.shape == (2, 32, 8, 8) for g in grids)
    assert torch.equal(grids[0][:, :, 2, 5], blocks[Tap("block", 0)][:, 1 + 2 * 8 + 5])  # after the class token
    assert torch.equal(grids[3], grids[1])
    head = UperNetHead(32, 11, channels=16)
    logits = head(grids)
    assert logits.shape == (2, 11, 32, 32)  # 4x the 8x8 grid
    logits.square().mean().backward()
    assert all(p.grad is not None for p in head.parameters())
    teacher = Teacher(tiny_student().model)
    before = [p.clone() for p in teacher.parameters()]
    metrics = SegmentationProbe(head="upernet", channels=16, epochs=3, batch_size=16, lr=1e-2).evaluate(
        teacher, scenes, CPU)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))  # a copy was fine-tuned
    assert metrics[0].value > 10  # 11 classes: a map of background alone scores 7.5
    assert "fine-tuned UperNet" in metrics[0].protocol and "blocks quarter-depth" in metrics[0].protocol
    with pytest.raises(BenchbaseError, match=r"^segmentation head upernet reads 4 blocks; got blocks=\[1, 2\]$"):
        SegmentationProbe(head="upernet", blocks=[1, 2])

"""Segmentation scored at each label map's original resolution (mmsegmentation's test protocol):
short-side resize with the aspect ratio kept, whole or sliding-window inference, logits upsampled
to the original label size. Checked against hand computations and mmseg's documented placement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from benchbase.components import DataBundle
from benchbase.data.camvid import LazySegmentation
from benchbase.data.folders import short_side_size
from benchbase.data.scenes import TensorSegmentationImages
from benchbase.errors import BenchbaseError
from benchbase.events import Motion
from benchbase.evaluation.segmentation import (
    SegmentationProbe,
    confusion_matrix,
    iou_from_confusion,
    slide_logits,
    training_label,
    training_windows,
    window_starts,
)
from benchbase.floors import PixelModel
from benchbase.outcomes import outcomes_of

CPU = torch.device("cpu")
IGNORE = 255


def test_short_side_resize_keeps_the_aspect_ratio_rounding_half_up_as_mmcv():
    # each side x size / short side, int(x + 0.5) (mmcv.rescale_size): 480 * 224/360 = 298.67 -> 299
    assert short_side_size(360, 480, 224) == (224, 299)  # CamVid's frames (torchvision truncates to 298)
    assert short_side_size(480, 360, 224) == (299, 224)  # portrait: the width is the short side
    assert short_side_size(180, 240, 64) == (64, 85)  # 85.33; the test data's 240x180 frames in cifar's CamVid task
    assert short_side_size(512, 683, 512) == (512, 683)  # already there
    assert short_side_size(5, 7, 3) == (3, 4)  # 4.2 -> 4
    assert short_side_size(6, 9, 4) == (4, 6)  # exactly 6
    assert short_side_size(2, 5, 4) == (4, 10)  # upscaling too


def test_window_placement_follows_mmseg_slide_inference():
    # mmseg: grids = max(L - crop + stride - 1, 0) // stride + 1, start i*stride moved back inside
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]  # (11 - 4 + 2) // 3 + 1 = 4; the last ends at 11
    assert window_starts(85, 64, 42) == [0, 21]  # the cifar suite's CamVid: two windows across
    assert window_starts(683, 512, 341) == [0, 171]  # ADE20K at mmseg's 512 crop, stride 341
    assert window_starts(16, 16, 10) == [0]  # a square image of the crop size: one window
    with pytest.raises(BenchbaseError, match="stride"):
        window_starts(10, 4, 0)


def test_sliding_windows_equal_whole_image_logits_for_a_translation_equivariant_model():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 1)  # logits of a pixel depend on that pixel alone
    images = torch.randn(2, 3, 7, 11)
    with torch.no_grad():
        for crop, stride in ((4, 3), (4, 1), (7, 2), (5, 5)):
            assert torch.allclose(slide_logits(conv, images, crop, stride), conv(images), atol=1e-6)
        # a model that is not translation-equivariant (position-dependent) differs: the test can fail
        ramp = lambda x: conv(x) + torch.arange(x.shape[-1], dtype=x.dtype)  # noqa: E731
        assert not torch.allclose(slide_logits(ramp, images, 4, 3), ramp(images))


def test_overlapping_window_logits_are_averaged():
    images = torch.zeros(1, 1, 3, 5)
    calls = iter([torch.full((1, 1, 3, 3), 1.0), torch.full((1, 1, 3, 3), 3.0)])  # columns [0, 3) and [2, 5)
    averaged = slide_logits(lambda _x: next(calls), images, 3, 2)
    assert averaged[0, 0].tolist() == [[1.0, 1.0, 2.0, 3.0, 3.0]] * 3  # column 2 in both windows: (1 + 3) / 2


class ColumnRamp(nn.Module):
    """A 'head' whose logits are a fixed function of position: class 1 minus class 0 = column - 1.4."""

    def forward(self, grid: Tensor) -> Tensor:
        column = torch.arange(grid.shape[-1], dtype=grid.dtype).expand(*grid.shape[:1], 1, *grid.shape[-2:])
        return torch.cat([torch.zeros_like(column), column - 1.4], dim=1)


def frame_files(tmp_path, label: np.ndarray) -> list[tuple]:
    """One 7x5 (width x height) RGB frame and its label map as PNG files."""
    image_path, label_path = tmp_path / "frame.png", tmp_path / "label.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)).save(image_path)
    Image.fromarray(label.astype(np.uint8), mode="L").save(label_path)
    return [(image_path, label_path)]


def hand_label() -> np.ndarray:
    label = np.zeros((5, 7), dtype=np.uint8)
    label[:, 2:] = 1  # class 1 from column 2 on
    label[0, 0] = IGNORE
    return label


def test_confusion_matrix_is_counted_at_the_original_label_size_by_hand(tmp_path):
    split = LazySegmentation(frame_files(tmp_path, hand_label()), ["left", "right"], image_size=3, label_size=3)
    image, label = split.evaluation_item(0)
    assert image.shape == (3, 3, 4) and label.shape == (5, 7)  # 5x7 -> short side 3: 3x4; label untouched
    assert split.resized_shape(0) == (3, 4)
    data = DataBundle("frame", {"train": split, "test": split}, image_size=3, in_chans=3, num_classes=2,
                      ignore_index=IGNORE)
    probe = SegmentationProbe(mode="whole")
    cm, per_image, _ = probe._predict(PixelModel(3, 3), ColumnRamp(), split, data, CPU)
    # logits on the 3x4 grid: column j - 1.4. Bilinear upsampling to width 7 (align_corners=False) reads
    # column u at s = (u + 0.5)·4/7 - 0.5, clamped to [0, 3]: u = 0..6 -> 0, .36, .93, 1.5, 2.07, 2.64, 3;
    # a ramp interpolates exactly, so class 1 iff s > 1.4: columns 3..6.
    # truth: columns 0-1 class 0 (10 pixels, 1 ignored), 2-6 class 1 (25): column 2 is predicted 0.
    assert cm.tolist() == [[9, 0], [5, 20]]
    assert per_image.tolist() == [[[9, 20], [14, 25], [9, 25]]]  # intersections, unions, labelled pixels
    iou, miou = iou_from_confusion(cm)
    assert miou == pytest.approx((9 / 14 + 20 / 25) / 2)
    # scored the old way (labels squashed to the 3x3 input, nearest): other counts, another mIoU
    squashed_label = torch.as_tensor(hand_label()).long()[None, None].double()
    squashed_label = nn.functional.interpolate(squashed_label, size=(3, 3), mode="nearest-exact")[0, 0].long()
    squashed_pred = (torch.arange(3) > 1.4).long().expand(3, 3)
    squashed = confusion_matrix(squashed_pred, squashed_label, 2, IGNORE)
    assert squashed.tolist() == [[3, 0], [3, 3]] and squashed.sum() != cm.sum()
    assert iou_from_confusion(squashed)[1] == pytest.approx(0.5) != pytest.approx(miou)


def test_stored_outcomes_recompute_miou_and_accuracy_exactly(tmp_path):
    generator = np.random.default_rng(1)
    pairs = []
    for i, (height, width) in enumerate(((9, 13), (13, 9), (9, 13), (11, 11))):  # various sizes and ratios
        folder = tmp_path / str(i)
        folder.mkdir()
        image = generator.integers(0, 255, (height, width, 3), dtype=np.uint8)
        label = np.where(image[..., 0] > 127, 1, 0).astype(np.uint8)
        label[0, : 2 + i] = IGNORE  # 2, 3, 4, 5 ignored pixels: tells the images apart
        Image.fromarray(image).save(folder / "f.png")
        Image.fromarray(label, mode="L").save(folder / "l.png")
        pairs.append((folder / "f.png", folder / "l.png"))
    split = LazySegmentation(pairs, ["dark", "red"], image_size=8, label_size=8)
    data = DataBundle("frames", {"train": split, "test": split}, image_size=8, in_chans=3, num_classes=2,
                      ignore_index=IGNORE)
    for mode in ("slide", "whole"):
        miou, accuracy = SegmentationProbe(epochs=3, lr=0.1, batch_size=3, mode=mode).evaluate(
            PixelModel(3, 8), data, CPU)
        labelled = 2 * 9 * 13 + 13 * 9 + 11 * 11 - 14  # every label pixel at its original size, less ignored
        assert miou.n == accuracy.n == labelled
        outcomes = outcomes_of(miou.extras)
        assert outcomes.n == 4 and outcomes.value() == miou.value  # exact
        # in dataset order although images of one size are predicted together: (9x13, 13x9, 9x13, 11x11)
        labelled_per_image = outcomes_of(accuracy.extras).arrays["den"]
        assert labelled_per_image.tolist() == [9 * 13 - 2, 13 * 9 - 3, 9 * 13 - 4, 11 * 11 - 5]
        assert outcomes_of(accuracy.extras).value() == pytest.approx(accuracy.value, rel=1e-14)  # sum order
        assert "short side is 8 px, aspect ratio kept" in miou.protocol
        assert "original size (labels never resized for scoring)" in miou.protocol
        assert ("sliding 8x8 windows with stride 5" in miou.protocol) == (mode == "slide")
        # 13 px long sides at 8: 12 px (8·13/9 = 11.6) and 8; 12 px give 2 windows every 5 px, 11x11 -> 8x8 one
        assert "(n=7 windows)" in miou.protocol


def test_training_windows_and_labels(tmp_path):
    split = LazySegmentation(frame_files(tmp_path, hand_label()), ["left", "right"], image_size=3, label_size=3)
    assert training_windows(split, 3, 2) == [(0, 0, 0), (0, 0, 1)]  # the 3x4 image: windows at columns 0 and 1
    label = torch.as_tensor(hand_label()).long()
    resized = training_label(label, (3, 4))  # nearest pixel centres: rows 0, 2, 4 (5/3), columns 0, 2, 3, 5 (7/4)
    assert torch.equal(resized, label[[0, 2, 4]][:, [0, 2, 3, 5]])
    assert training_label(label, (5, 7)) is label


def test_square_in_memory_images_keep_their_single_window(tmp_path):
    images = torch.randn(4, 1, 8, 8)
    split = TensorSegmentationImages(images, (images[:, 0] > 0).long(), ["dark", "bright"])
    assert training_windows(split, 8, 5) == [(i, 0, 0) for i in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(split.evaluation_item(2), split[2]))


def test_bad_modes_and_strides_are_reported():
    with pytest.raises(BenchbaseError, match="inference mode"):
        SegmentationProbe(mode="tiles")
    with pytest.raises(BenchbaseError, match="stride"):
        SegmentationProbe(stride=0)
    assert SegmentationProbe().window_stride(512) == 341 and SegmentationProbe(stride=7).window_stride(512) == 7
    assert math.isclose(SegmentationProbe().window_stride(64), 42)


def test_camvid_frames_are_scored_at_their_aspect_ratio_and_labels_as_stored(camvid_root):
    from benchbase.data.camvid import build_camvid

    test = build_camvid({"root": str(camvid_root), "image_size": 48}).split("test")
    image, label = test.evaluation_item(0)
    with Image.open(test.pairs[0][1]) as stored:
        assert label.shape == (stored.height, stored.width)  # the test data's 240x180 frames: never resized
        assert torch.equal(label, torch.as_tensor(np.array(stored)).long())
    assert image.shape == (3, 48, 64) == (3, *short_side_size(stored.height, stored.width, 48))
    assert test.resized_shape(0) == (48, 64) and test[0][0].shape == (3, 48, 48)  # training items stay square


def test_simulated_events_are_scored_at_the_aspect_ratio_with_the_label_warped_as_stored(camvid_root):
    from benchbase.data.events import build_camvid_events
    from benchbase.events import warp

    test = build_camvid_events({"root": str(camvid_root), "image_size": 48, "params": {"bins": 2}}).split("test")
    x, label = test.evaluation_item(1)
    image, source_label = test.frames.evaluation_item(1)
    motion = test.sample(1).motion  # the square item's motion, drawn from the same (seed, split, index)
    assert x.shape == (5, 48, 64) and label.shape == source_label.shape == (180, 240)
    assert torch.allclose(x[:3], warp(image, motion)) and x[3:].abs().sum() > 0
    scale = 240 / 64  # = 180 / 48: the motion's translation in the label's pixels
    scaled = Motion(motion.dx * scale, motion.dy * scale, motion.rotation, motion.scale)
    assert torch.equal(label, warp(source_label, scaled, mode="nearest"))
    assert test.resized_shape(1) == (48, 64)


def test_in_memory_event_scenes_are_scored_as_their_items():
    from benchbase.data.events import build_digit_scene_events

    test = build_digit_scene_events({"image_size": 16, "params": {"n_train": 1, "n_test": 2}}).split("test")
    assert all(torch.equal(a, b) for a, b in zip(test.evaluation_item(1), test[1]))


def test_recordings_are_scored_at_their_aspect_ratio_and_labels_as_recorded(tmp_path):
    from benchbase.data.events import build_event_recordings

    (tmp_path / "test").mkdir()
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, (20, 30)).astype(np.int32)
    np.savez(tmp_path / "test" / "a.npz", x=rng.integers(0, 30, 50).astype(np.uint16),
             y=rng.integers(0, 20, 50).astype(np.uint16), t=np.sort(rng.uniform(0, 1, 50)),
             p=rng.integers(0, 2, 50).astype(np.uint8), frame=rng.integers(0, 256, (20, 30, 3)).astype(np.uint8),
             label=label)
    test = build_event_recordings({"root": str(tmp_path), "image_size": 8, "params": {"num_classes": 3}}).split("test")
    x, scored = test.evaluation_item(0)
    assert x.shape == (6, 8, 12) and torch.equal(scored, torch.from_numpy(label).long())  # 20x30 -> 8x12


def test_timm_vits_built_with_dynamic_img_size_run_whole_non_square_images(tmp_path):
    import timm

    from benchbase.components import Student

    split = LazySegmentation(frame_files(tmp_path, hand_label()), ["left", "right"], image_size=4, label_size=4)
    data = DataBundle("frame", {"train": split, "test": split}, image_size=4, in_chans=3, num_classes=2,
                      ignore_index=IGNORE)
    torch.manual_seed(0)
    vit = Student(timm.create_model("vit_tiny_patch16_224", img_size=4, patch_size=2, embed_dim=16, depth=1,
                                    num_heads=2, num_classes=0, dynamic_img_size=True))  # as models.py builds them
    assert vit.patch_grid(split.evaluation_item(0)[0][None]).shape == (1, 16, 2, 3)  # the 4x6 image's grid
    for mode in ("whole", "slide"):
        miou, _ = SegmentationProbe(epochs=1, mode=mode).evaluate(vit, data, CPU)
        assert miou.n == 5 * 7 - 1 and 0 <= miou.value <= 100

"""SAM "segment everything" on a student's embedding: plumbing with a small RANDOM SAM (no results
are reported from random weights) and the post-processing against hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from benchbase.capture import Tap
from benchbase.components import DataBundle
from benchbase.config import compose_config
from benchbase.data.scenes import TensorSegmentationImages
from benchbase.errors import BenchbaseError, NotApplicable
from benchbase.evaluation.sam_masks import (
    EmbeddingPredictor,
    SamEverything,
    drop_repeated_masks,
    paint_segments,
    clean_small_regions,
    decoder_sizes,
    remove_small_regions,
    sam_prompt_and_decoder,
)
from benchbase.evaluation.segments import segment_ids
from benchbase.floors import PixelModel
from benchbase.plugin_manager import load
from benchbase.sam import SamStudent, build_sam_encoder

# a random SAM at the tiny encoder's sizes (research notes 5.3): 64 px images, 4x4 grid, 32 channels
DECODER = {"decoder_depth": 1, "decoder_mlp_dim": 64, "decoder_heads": 2, "iou_head_depth": 2,
           "iou_head_hidden_dim": 32, "mask_in_chans": 8}


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    prompt = PromptEncoder(embed_dim=32, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=8)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=1, embedding_dim=32,
                          mlp_dim=64, num_heads=2), transformer_dim=32, iou_head_depth=2, iou_head_hidden_dim=32)
    sam = Sam(image_encoder=build_sam_encoder("tiny"), prompt_encoder=prompt, mask_decoder=decoder)
    path = tmp_path / "sam_tiny_random.pth"
    torch.save(sam.state_dict(), path)
    return path


def student(in_chans: int = 2, offset: int = 1) -> SamStudent:
    torch.manual_seed(1)
    model = SamStudent(build_sam_encoder("tiny", in_chans=in_chans))
    model.input_slice = (offset, offset + in_chans)  # stacked frame (1 channel) + events
    return model


def scenes(count: int = 3, size: int = 48) -> DataBundle:
    """Stacked [3, S, S] images (1 frame + 2 event channels) with two-region label maps."""
    generator = torch.Generator().manual_seed(4)
    images = torch.randn(count, 3, size, size, generator=generator)
    labels = torch.zeros(count, size, size, dtype=torch.long)
    for index in range(count):
        labels[index, 8 + index:30, 10:40] = 1
        labels[index, 36:, :12] = 2
    split = TensorSegmentationImages(images, labels, ["bg", "a", "b"])
    return DataBundle("toy", {"test": split}, size, 3, 3, input_channels={"frame": 1, "events": 2})


def test_the_predictor_embedding_is_the_students_neck_output(checkpoint):
    model = student()
    prompt, decoder = sam_prompt_and_decoder(checkpoint, 32, (4, 4), 64, **DECODER)
    sam = Sam(image_encoder=model.model, prompt_encoder=prompt, mask_decoder=decoder)
    predictor = EmbeddingPredictor(sam, model)
    image = scenes().split("test")[0][0]  # [3, 48, 48]
    predictor.set_image(image.permute(1, 2, 0).numpy())
    # the longer side is resized to 64 (bilinear), then nothing to pad; the student reads channels 1-2
    resized = torch.nn.functional.interpolate(image[None], size=(64, 64), mode="bilinear", align_corners=False)
    tokens = model.run(resized, [Tap("tokens")])[Tap("tokens")]  # [1, 16, 32]
    torch.testing.assert_close(predictor.features, tokens.transpose(1, 2).reshape(1, 32, 4, 4))
    assert predictor.original_size == (48, 48) and predictor.input_size == (64, 64)
    # SAM's own decoder runs on it: one point prompt gives masks at the original size
    masks, scores, _ = predictor.predict(point_coords=np.array([[20.0, 20.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 48, 48) and scores.shape == (3,)


SEED = 5


def test_the_evaluator_scores_every_ground_truth_segment(checkpoint, monkeypatch):
    data = scenes()
    evaluator = SamEverything(checkpoint=str(checkpoint), points_per_side=4, pred_iou_thresh=0.0,
                              stability_score_thresh=0.0, min_mask_region_area=4, min_mask_area=4, **DECODER)
    model = student()
    model.train()
    metrics = {m.name: m for m in evaluator.evaluate(model, data, torch.device("cpu"))}
    assert model.training  # left as it was
    segments = sum(segment_ids(label, min_area=12)[1] for _, label in data.split("test"))
    assert set(metrics) == {"mIoU", "aIoU", "precision", "recall"}
    assert all(m.n == segments for m in metrics.values())
    assert all(0 <= m.value <= 100 for m in metrics.values())
    assert "sam_tiny_random.pth" in metrics["mIoU"].protocol and "4x4 point grid" in metrics["mIoU"].protocol
    # how many masks a model yields is its result, kept in the extras: the protocol is the column's,
    # the same for a model that yields none
    assert {m.extras["masks"] for m in metrics.values()} == {3}
    monkeypatch.setattr(evaluator, "masks", lambda *args: [])
    other = {m.name: m for m in evaluator.evaluate(model, data, torch.device("cpu"))}
    assert {m.extras["masks"] for m in other.values()} == {0}
    assert all(other[name].protocol == metrics[name].protocol for name in metrics)


def test_the_decoder_sizes_are_read_from_the_checkpoint_but_its_heads(checkpoint):
    sizes = {k: v for k, v in DECODER.items() if k != "decoder_heads"}
    assert decoder_sizes(torch.load(checkpoint, weights_only=True)) == sizes
    prompt, decoder = sam_prompt_and_decoder(checkpoint, 32, (4, 4), 64, decoder_heads=2)
    assert decoder.transformer.depth == 1 and decoder.transformer.layers[0].mlp.lin1.out_features == 64
    assert len(decoder.iou_prediction_head.layers) == 2 and prompt.mask_downscaling[3].out_channels == 8
    assert decoder_sizes({}) == {}  # no decoder in the file: SAM's sizes, then the shape check fails


def test_evaluator_errors(checkpoint):
    with pytest.raises(BenchbaseError, match=r"set params.checkpoint=PATH or use a teacher with one "
                                             r"\(teacher.source=checkpoint, or a recipe with teacher.recipe.finetune_method=sam\)$"):
        SamEverything().evaluate(student(), scenes(), torch.device("cpu"))
    with pytest.raises(BenchbaseError, match="fit a 32-channel SAM"):  # sizes other than the checkpoint's
        SamEverything(checkpoint=str(checkpoint), decoder_mlp_dim=2048).evaluate(student(), scenes(), torch.device("cpu"))
    from benchbase.components import Student
    from timm.models.vision_transformer import VisionTransformer

    vit = Student(VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2))
    with pytest.raises(BenchbaseError, match="SAM image encoder"):
        SamEverything(checkpoint=str(checkpoint), **DECODER).evaluate(vit, scenes(), torch.device("cpu"))
    # the pixels floor has no embedding: the task does not apply (an empty cell, not a failed row)
    pixels = PixelModel.reading(scenes(), (1, 3))
    with pytest.raises(NotApplicable, match="pixels floor"):
        SamEverything(checkpoint=str(checkpoint), **DECODER).evaluate(pixels, scenes(), torch.device("cpu"))


def test_a_suite_file_with_the_task_composes_and_builds_the_evaluator(checkpoint, tmp_path):
    (tmp_path / "conf" / "suite").mkdir(parents=True)
    (tmp_path / "conf" / "suite" / "everything.yaml").write_text(
        "# @package _global_\ndefaults:\n  - eventsam\nsuite:\n  name: everything\n  tasks:\n    everything:\n"
        "      evaluator: sam_everything\n      dataset: digit_scene_events\n"
        f"      params: {{checkpoint: '{checkpoint}', points_per_side: 8}}\n"
    )
    bb = load()
    cfg = compose_config(["suite=everything"], [str(tmp_path / "conf"), *bb.config_dirs()])
    assert set(cfg.suite.tasks) == {"segmentation", "everything"}
    task = cfg.suite.tasks.everything
    evaluator = bb.registry.get("evaluators", task.evaluator)(**task.params)
    assert isinstance(evaluator, SamEverything) and evaluator.checkpoint == str(checkpoint)
    assert evaluator.generator_args["points_per_side"] == 8


def test_small_holes_are_filled_and_small_islands_removed():
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:8, 1:8] = True
    mask[4, 4] = False  # a 1-pixel hole
    mask[9, 9] = True  # a 1-pixel island
    filled = remove_small_regions(mask, 2, "holes")
    assert filled[4, 4] and filled[9, 9] and filled.sum() == mask.sum() + 1
    cleaned = remove_small_regions(filled, 2, "islands")
    assert not cleaned[9, 9] and cleaned.sum() == 49
    lone = np.zeros((5, 5), dtype=bool)
    lone[0, 0] = lone[3:5, 3:5] = True
    assert remove_small_regions(lone, 10, "islands").sum() == 4  # all small: the largest stays


def test_clean_up_is_followed_by_nms_that_prefers_unchanged_masks():
    unchanged = np.zeros((20, 20), dtype=bool)
    unchanged[2:12, 2:12] = True
    changed = unchanged.copy()
    changed[2:12, 3:12] = True
    changed[18, 18] = True  # an island: removed, so the mask changes and its box shrinks onto the other's
    elsewhere = np.zeros((20, 20), dtype=bool)
    elsewhere[14:19, 0:5] = True
    kept = clean_small_regions([changed, unchanged, elsewhere], area=4, nms_threshold=0.7)
    assert len(kept) == 2 and np.array_equal(kept[0], unchanged) and np.array_equal(kept[1], elsewhere)
    assert clean_small_regions([changed], area=0, nms_threshold=0.7)[0][18, 18]  # area 0: no clean-up


def test_repeats_inside_a_larger_box_are_dropped_and_segments_painted_largest_first():
    big = np.zeros((20, 20), dtype=bool)
    big[0:10, 0:10] = True
    inner = np.zeros_like(big)
    inner[2:8, 2:8] = True  # centre inside big's box, box IoU 36/100 > 0.1: a repeat
    corner = np.zeros_like(big)
    corner[0:3, 0:3] = True  # centre inside big's box but box IoU 9/100 < 0.1: kept
    apart = np.zeros_like(big)
    apart[12:20, 12:20] = True
    kept = drop_repeated_masks([inner, corner, big, apart], 0.1)
    assert [int(m.sum()) for m in kept] == [100, 64, 9]
    painted = paint_segments(kept, (20, 20))
    assert len(np.unique(painted)) == 4  # background, big (minus the corner), apart, corner
    assert painted[1, 1] == painted[2, 2] != painted[5, 5]  # the smaller corner mask is painted over big
    assert painted[5, 5] != painted[15, 15] != painted[19, 0]


def test_given_segments_need_not_be_connected_and_ignored_pixels_belong_to_none():
    from benchbase.evaluation.segments import SegmentMetricAccumulator

    gt = np.zeros((6, 6), dtype=np.int64)
    gt[:, 3:] = 1  # two ground-truth segments of 18 pixels
    gt[0, 0] = 9  # ignored
    pred = np.zeros((6, 6), dtype=np.int64)
    pred[:3, 3:] = pred[3:, 3:] = 1  # one predicted id over the right half...
    pred[0, :3] = 1  # ...plus a disconnected strip of the left half (one pixel of it ignored)
    acc = SegmentMetricAccumulator(ignore_index=9, gt_min_area=1)
    acc.update_segments(pred, gt)
    result = acc.compute()
    # left gt (17 px) vs id 0 (15 px inside it): IoU 15/17; right gt (18) vs id 1 (18 + 2 strip): IoU 18/20
    assert result["count"] == 2
    assert result["mIoU"] == pytest.approx((15 / 17 + 18 / 20) / 2)
    assert result["precision"] == pytest.approx((1 + 18 / 20) / 2)


def test_masks_are_made_at_each_label_maps_resolution_with_areas_scaled_to_it(checkpoint):
    """Images scored as read for scoring (here 48 px), masks made by SAM at the label map's own size
    (96 px: SAM upsamples to the original size), EventSAM's areas scaled from its 346x260 frames."""
    small = scenes()
    labels = torch.stack([label for _, label in small.split("test")])
    big = labels.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # [3, 96, 96]
    images = torch.stack([image for image, _ in small.split("test")])
    data = DataBundle("toy", {"test": TensorSegmentationImages(images, big, ["bg", "a", "b"])}, 48, 3, 3,
                      input_channels={"frame": 1, "events": 2})
    evaluator = SamEverything(checkpoint=str(checkpoint), points_per_side=4, pred_iou_thresh=0.0,
                              stability_score_thresh=0.0, reference_area=89960, **DECODER)
    assert evaluator.areas(89960) == (900, 144) and evaluator.areas(96 * 96) == (92, 15)
    assert SamEverything().areas(96 * 96) == (900, 144)  # without a reference: EventSAM's absolute areas
    from segment_anything import SamAutomaticMaskGenerator

    model = student()
    prompt, decoder = sam_prompt_and_decoder(checkpoint, 32, (4, 4), 64, **DECODER)
    generator = SamAutomaticMaskGenerator(Sam(image_encoder=model.model, prompt_encoder=prompt, mask_decoder=decoder),
                                          points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    generator.predictor = EmbeddingPredictor(generator.predictor.model, model)
    masks = evaluator.masks(generator, images[0], (96, 96))
    assert masks and all(mask.shape == (96, 96) for mask in masks)
    metrics = {m.name: m for m in evaluator.evaluate(model, data, torch.device("cpu"))}
    assert metrics["mIoU"].n == sum(segment_ids(label, min_area=12)[1] for label in big)
    assert "scaled to each label map's pixels" in metrics["mIoU"].protocol
    with pytest.raises(BenchbaseError, match="^sam_everything: reference_area=0; give the pixels"):
        SamEverything(reference_area=0)

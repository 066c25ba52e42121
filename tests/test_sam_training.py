"""SAM's promptable training as a teacher recipe stage (``teacher.recipe.finetune_method: sam``):
instances from label maps, prompt sampling, the losses by hand, the batched decoder against
segment-anything's, a few steps lowering the loss, and the cached full SAM checkpoint read back by
the teacher and by the ``sam_everything`` evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

from benchbase.capture import Tap
from benchbase.components import DataBundle, StepInputs
from benchbase.config import compose_config
from benchbase.data.scenes import TensorSegmentationImages
from benchbase.errors import BenchbaseError
from benchbase.evaluation.sam_masks import decoder_sizes, sam_prompt_and_decoder
from benchbase.methods import Methods
from benchbase.plugin_manager import load
from benchbase.sam import SamStudent, build_sam_encoder
from benchbase.stages import build_student
from benchbase.suite import evaluate_task, suite_context
from benchbase.teachers import TEACHER_FILE
from benchbase_plugins import sam_training
from benchbase_plugins.sam_parts import (
    correction_points,
    decode,
    dice_loss,
    focal_loss,
    instance_masks,
    iteration_schedule,
    mask_iou,
    noisy_boxes,
    uniform_pixels,
)
from benchbase_plugins.sam_training import SamTraining


def test_instances_are_the_large_enough_8_connected_components_of_each_foreground_label():
    labels = np.zeros((10, 12), dtype=np.int64)
    labels[0:4, 0:4] = 1  # 16 px: an instance of label 1
    labels[6:9, 0:3] = 1  # 9 px: under 12, dropped
    labels[0:3, 6:9] = 2  # 9 px + 9 px touching only at a corner: one 8-connected instance of label 2
    labels[3:6, 9:12] = 2
    labels[5:10, 4:8] = 7  # 20 px of the unlabelled value
    found = instance_masks(labels, background=[0], ignore_index=7)
    square = np.zeros((10, 12), dtype=bool)
    square[0:4, 0:4] = True
    assert found.shape == (2, 10, 12) and found.dtype == bool
    assert np.array_equal(found[0], square) and np.array_equal(found[1], labels == 2)
    assert instance_masks(labels, background=[0], ignore_index=7, min_area=9).shape[0] == 3
    everything = instance_masks(labels, min_area=1)  # no background: label 0's region is an instance too
    assert everything.shape[0] == 5 and not (everything.sum(0) > 1).any()
    assert instance_masks(np.zeros((4, 4), dtype=np.int64), background=[0]).shape == (0, 4, 4)


def test_points_are_drawn_uniformly_inside_each_mask():
    torch.manual_seed(0)
    ring = torch.zeros(6, 6, dtype=torch.bool)
    ring[1:5, 1:5] = True
    ring[2:4, 2:4] = False  # 12 pixels
    masks = torch.stack([ring, torch.zeros(6, 6, dtype=torch.bool)]).repeat(6000, 1, 1)
    points, found = uniform_pixels(masks)
    x, y = points.long().unbind(1)
    assert found[0::2].all() and not found[1::2].any()
    inside = ring[y[0::2], x[0::2]]
    assert inside.all()
    counts = torch.bincount(y[0::2] * 6 + x[0::2], minlength=36)[ring.flatten()]
    assert counts.sum() == 6000 and (counts - 500).abs().max() < 100  # 500 expected each, sd 21


def test_boxes_are_the_masks_boxes_moved_by_the_papers_noise():
    mask = torch.zeros(96, 96, dtype=torch.bool)
    mask[30:51, 30:71] = True  # box (30, 30, 70, 50): 40 wide, 20 high
    exact = noisy_boxes(mask[None], noise=0.0)
    assert exact.tolist() == [[30.0, 30.0, 70.0, 50.0]]  # the tight box, inclusive corners: it contains the mask
    torch.manual_seed(0)
    moved = noisy_boxes(mask[None].expand(20000, -1, -1), noise=0.1, max_noise=3.0) - exact
    std = torch.tensor([3.0, 2.0, 3.0, 2.0])  # 10% of the side: 4 px wide (capped at 3), 2 px high
    assert (moved.abs() <= 5 * std).all()  # every corner within 5 sd of the mask's box
    assert moved.std(0).tolist() == pytest.approx(std.tolist(), rel=0.03)
    assert moved.mean(0).abs().max() < 0.1
    edge = torch.zeros(1, 8, 8, dtype=torch.bool)
    edge[0, 0:8, 0:8] = True
    boxes = noisy_boxes(edge.expand(500, -1, -1), noise=0.5)
    assert (boxes >= 0).all() and (boxes <= 7).all()  # clipped to the image
    assert (boxes[:, :2] <= boxes[:, 2:]).all()  # and in order


def test_correction_points_come_from_the_error_region_with_its_sign():
    torch.manual_seed(0)
    target = torch.zeros(8, 8, dtype=torch.bool)
    target[0:4, 0:4] = True
    predicted = torch.zeros(8, 8, dtype=torch.bool)
    predicted[0:4, 2:7] = True  # misses 8 pixels of the target, spills over 12
    points, labels = correction_points(predicted[None].expand(4000, -1, -1), target[None].expand(4000, -1, -1))
    x, y = points.long().unbind(1)
    missed, spilled = target & ~predicted, predicted & ~target
    assert (missed[y, x] | spilled[y, x]).all()  # every point lies in the error region
    assert torch.equal(labels == 1, missed[y, x]) and torch.equal(labels == 0, spilled[y, x])
    assert (labels == 1).float().mean().item() == pytest.approx(8 / 20, abs=0.03)  # uniform over it
    exact, label = correction_points(target[None], target[None])
    assert label.tolist() == [-1.0]  # an exact prediction: segment-anything's "not a point"


def test_two_iterations_add_no_point_one_at_the_end_one_anywhere_among_the_corrections():
    for corrections in (0, 3, 8):
        schedules = [iteration_schedule(corrections, torch.Generator().manual_seed(s)) for s in range(60)]
        assert all(len(s) == corrections + 2 and s.count(False) == 2 and not s[-1] for s in schedules)
        assert {s.index(False) for s in schedules} == set(range(corrections + 1))


def test_focal_dice_and_iou_against_hand_computation():
    logits = torch.tensor([[0.0, math.log(3)], [-math.log(3), 2.0]])
    target = torch.tensor([[True, True], [False, False]])
    probs = [0.5, 0.75, 0.25, 1 / (1 + math.exp(-2))]

    def focal(p: float, t: bool) -> float:
        p_t = p if t else 1 - p
        return (0.25 if t else 0.75) * (1 - p_t) ** 2 * -math.log(p_t)

    expected = sum(focal(p, t) for p, t in zip(probs, [True, True, False, False])) / 4
    assert focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert dice_loss(logits, target).item() == pytest.approx(1 - (2 * (0.5 + 0.75) + 1) / (sum(probs) + 2 + 1))
    predicted = logits > 0  # [[F, T], [F, T]]
    assert mask_iou(predicted, target).item() == pytest.approx(1 / 3)
    assert mask_iou(torch.zeros(2, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool)).item() == 1.0
    assert focal_loss(logits.expand(3, -1, -1), target.expand(3, -1, -1)).shape == (3,)


def sam_modules(width: int = 32, grid: tuple[int, int] = (4, 4), size: int = 16) -> tuple[PromptEncoder, MaskDecoder]:
    torch.manual_seed(0)
    prompt = PromptEncoder(embed_dim=width, image_embedding_size=grid, input_image_size=(size, size), mask_in_chans=8)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer_dim=width, iou_head_depth=2, iou_head_hidden_dim=16,
                          transformer=TwoWayTransformer(depth=1, embedding_dim=width, mlp_dim=64, num_heads=2))
    return prompt, decoder


def test_the_batched_decoder_is_segment_anythings_for_each_image():
    prompt, decoder = sam_modules()
    embeddings = torch.randn(2, 32, 4, 4)
    points = torch.tensor([[[3.0, 5.0], [9.0, 1.0]], [[0.0, 0.0], [12.0, 7.0]], [[4.0, 4.0], [15.0, 15.0]]])
    labels = torch.tensor([[1.0, 0.0], [1.0, -1.0], [1.0, 1.0]])
    owner = torch.tensor([0, 0, 1])  # two prompts on image 0, one on image 1
    with torch.no_grad():
        sparse, dense = prompt(points=(points, labels), boxes=None, masks=torch.randn(3, 1, 16, 16))
        masks, iou = decode(decoder, embeddings[owner], prompt.get_dense_pe(), sparse, dense)
        for image in (0, 1):
            rows = owner == image
            expected = decoder.predict_masks(embeddings[image:image + 1], prompt.get_dense_pe(), sparse[rows], dense[rows])
            torch.testing.assert_close(masks[rows], expected[0])
            torch.testing.assert_close(iou[rows], expected[1])
    assert masks.shape == (3, 4, 16, 16) and iou.shape == (3, 4)


def tiny_encoder(size: int = 16, in_chans: int = 1) -> SamStudent:
    torch.manual_seed(0)
    return SamStudent(build_sam_encoder("tiny", img_size=size, patch_size=4, in_chans=in_chans, window_size=2))


def squares(count: int = 4, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """[count, 1, S, S] images of two bright squares (labels 1, 2) on background 0, [count, S, S] labels."""
    generator = torch.Generator().manual_seed(3)
    labels = torch.zeros(count, size, size, dtype=torch.long)
    for index in range(count):
        y, x = torch.randint(0, size // 2 - 4, (2,), generator=generator).tolist()
        labels[index, y:y + 5, x:x + 5] = 1
        labels[index, size // 2 + y:size // 2 + y + 4, size // 2 + x:size // 2 + x + 6] = 2
    images = labels[:, None].float() + 0.1 * torch.randn(count, 1, size, size, generator=generator)
    return images, labels


def test_the_step_keeps_the_lowest_of_three_masks_for_one_point_and_feeds_the_most_confident_back(monkeypatch):
    """The decoder replaced by fixed outputs: one point-prompted mask, no correction iterations (3
    iterations: the first prompt and SAM's two without a new point)."""
    method = SamTraining(background=[0], correction_points=0, point_probability=1.0, decoder_depth=1,
                         decoder_mlp_dim=64, decoder_heads=2, iou_head_depth=2, iou_head_hidden_dim=16,
                         mask_in_chans=8)
    student = tiny_encoder()
    method.setup(student, None)
    target = torch.zeros(1, 16, 16, dtype=torch.bool)
    target[0, 2:8, 3:9] = True
    logits = torch.full((1, 4, 16, 16), -2.0)
    logits[0, 0] = torch.where(target[0], 1.0, -1.0)  # the single-mask output
    logits[0, 2, 2:8, 3:9] = 3.0  # multimask output 2 (index 1 of 3): the best mask
    logits[0, 3, 0:8, 0:9] = 2.0  # multimask output 3: spills over, but predicts the highest IoU
    iou_pred = torch.tensor([[0.3, 0.1, 0.5, 0.9]])
    fed = []

    def fixed(decoder, embeddings, image_pe, sparse, dense):
        fed.append(dense)
        return logits.clone().requires_grad_(), iou_pred.clone().requires_grad_()

    monkeypatch.setattr(sam_training, "decode", fixed)
    inputs = StepInputs(student=None, teacher=None, labels=torch.zeros(1, 16, 16, dtype=torch.long),
                        extras={"masks": target, "image": torch.tensor([0]), "box": torch.tensor([False])})
    captures = student.run(torch.zeros(1, 1, 16, 16), [Tap("tokens")])
    terms = method(captures, None, inputs)
    targets = target.expand(3, -1, -1)
    multimask_loss = 20 * focal_loss(logits[0, 1:], targets) + dice_loss(logits[0, 1:], targets)
    assert multimask_loss.argmin().item() == 1
    first_iou = ((iou_pred[0, 1:] - mask_iou(logits[0, 1:] > 0, targets)) ** 2).mean()
    later_iou = (iou_pred[0, 0] - mask_iou(logits[0, 0] > 0, target[0])) ** 2
    assert terms["focal"].item() == pytest.approx(
        (20 * focal_loss(logits[0, 2], target[0]) + 2 * 20 * focal_loss(logits[0, 0], target[0])).item() / 3)
    assert terms["dice"].item() == pytest.approx(
        (dice_loss(logits[0, 2], target[0]) + 2 * dice_loss(logits[0, 0], target[0])).item() / 3)
    assert terms["iou"].item() == pytest.approx((first_iou + 2 * later_iou).item() / 3)
    # the second iteration's mask prompt: the logits of the mask of highest predicted IoU (output 3)
    torch.testing.assert_close(fed[1], method.prompt_encoder.mask_downscaling(logits[:, 3:4]))


def test_a_few_steps_on_a_tiny_batch_lower_the_loss():
    images, labels = squares()
    student = tiny_encoder()
    method = SamTraining(background=[0], correction_points=2, decoder_depth=1, decoder_mlp_dim=64, decoder_heads=2,
                         iou_head_depth=2, iou_head_hidden_dim=16, mask_in_chans=8)
    method.setup(student, None)
    optimizer = torch.optim.AdamW([*student.parameters(), *method.parameters()], lr=2e-3)
    losses = []
    for step in range(30):
        torch.manual_seed(step % 3)  # the same three prompt draws again and again
        inputs = method.make_inputs(images, labels)
        assert inputs.extras["masks"].shape[0] == 8  # two squares an image
        total = sum(method(student.run(inputs.student, [Tap("tokens")]), None, inputs).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert sum(losses[-3:]) < 0.6 * sum(losses[:3]), losses


def test_the_recipe_plan_builds_sam_with_its_config_the_datas_background_and_its_protocol():
    methods = Methods(load(), [])
    recipe = compose_config(["suite=eventsam"]).teacher.recipe
    assert recipe.finetune_method == "sam"
    images, labels = squares()
    split = TensorSegmentationImages(images, labels, ["background", "a", "b"])
    data = DataBundle("toy", {"train": split}, 16, 1, 3)
    [(stage, name, params, epochs, trainer)] = methods.recipe_plan(recipe, data)
    assert (stage, name, epochs) == ("finetune", "sam", recipe.finetune_epochs)
    assert params == {**methods.recipe_params("sam"), "ignore_index": -100, "background": [0]}
    assert trainer == {"weight_decay": 0.1, "betas": [0.9, 0.999]}  # SAM's AdamW, method/sam.yaml's protocol
    no_background = DataBundle("toy", {"train": TensorSegmentationImages(images, labels, ["Sky", "Road", "Car"])},
                               16, 1, 3, ignore_index=11)
    recipe.finetune_params = {"correction_points": 2}
    recipe.finetune_trainer = {"weight_decay": 0.0}
    _, _, params, _, trainer = methods.recipe_plan(recipe, no_background)[0]
    assert (params["background"], params["ignore_index"], params["correction_points"]) == ([], 11, 2)
    assert trainer["weight_decay"] == 0.0
    # the cache key covers the method's params and its protocol, as every recipe stage's
    key = methods.recipe_key(compose_config(["suite=eventsam"]), data)
    assert key != methods.recipe_key(compose_config(["suite=eventsam", "+teacher.recipe.finetune_params.box_noise=0.2"]),
                                     data)
    changed = Methods(load(), [])
    changed.recipe_trainer = lambda name: {"weight_decay": 0.05}
    assert changed.recipe_key(compose_config(["suite=eventsam"]), data) != key
    recipe.finetune_method = "segment_anything"
    with pytest.raises(BenchbaseError, match=r"^teacher.recipe.finetune_method='segment_anything'; use supervised, "
                                             r"supervised_segmentation, sam or none$"):
        methods.recipe_plan(recipe, data)


def test_the_training_plugin_is_no_method_plugin_a_suite_runs():
    bb = load()
    assert "sam" in bb.registry.names("methods", "sam_training")
    assert "sam_training" not in bb.method_plugins()
    with pytest.raises(BenchbaseError, match=r"^plugin 'sam_training' registers only teacher-recipe methods \(sam\); "
                                             r"name them in teacher.recipe.finetune_method, not in --methods$"):
        bb.select_methods(["sam_training"])


SUITE = ["suite=eventsam", "+data.digit_scene_events.params.n_train=16", "+data.digit_scene_events.params.n_test=2",
         "teacher.recipe.finetune_epochs=1", "teacher.recipe.batch_size=8", "trainer.progress=false",
         "teacher.embed_dim=32", "teacher.depth=2", "teacher.num_heads=2",
         "teacher.params={window_size:4,global_attn_indexes:[1],out_chans:32}",
         "+teacher.recipe.finetune_params.correction_points=1", "+teacher.recipe.finetune_params.decoder_mlp_dim=64",
         "+teacher.recipe.finetune_params.iou_head_hidden_dim=32"]


def test_the_recipe_caches_a_full_sam_that_the_teacher_and_sam_everything_read(tmp_path):
    ctx = suite_context(load(), [*SUITE, f"home={tmp_path}"])
    teacher = ctx.teacher()
    path = tmp_path / "teachers" / ctx.methods.recipe_key(ctx.cfg, ctx.dataset("digit_scene_events")) / TEACHER_FILE
    assert ctx.teacher_checkpoint() == str(path) and teacher.source == ctx.teacher_source()
    state = torch.load(path, weights_only=True)  # segment-anything's layout, as build_sam loads it
    assert {key.split(".")[0] for key in state} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    for key, value in teacher.model.state_dict().items():
        torch.testing.assert_close(value, state[f"image_encoder.{key}"])
    assert decoder_sizes(state) == {"decoder_depth": 2, "decoder_mlp_dim": 64, "iou_head_depth": 3,
                                    "iou_head_hidden_dim": 32, "mask_in_chans": 16}
    prompt, decoder = sam_prompt_and_decoder(path, 32, teacher.grid, 32)  # sizes read from the file
    torch.testing.assert_close(decoder.iou_token.weight, state["mask_decoder.iou_token.weight"])
    assert torch.equal(prompt.pe_layer.positional_encoding_gaussian_matrix,
                       state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"])
    # a task without a checkpoint scores with the teacher's own prompt encoder and decoder (teacher row)
    task = compose_config(["suite=eventsam"]).suite.tasks.segmentation
    task.evaluator, task.params = "sam_everything", {"points_per_side": 4, "max_images": 2, "min_mask_region_area": 4,
                                                    "min_mask_area": 4}
    metrics = {m.name: m for m in evaluate_task(ctx, "everything", task, teacher, seed=0)}
    assert set(metrics) == {"mIoU", "aIoU", "precision", "recall"}
    assert "from the suite teacher's checkpoint (teacher.pt)" in metrics["mIoU"].protocol
    # a SAM student starts from it too (its image encoder), as from a real SAM checkpoint
    same = [f"student.{key}={value}" for key, value in (("embed_dim", 32), ("depth", 2), ("num_heads", 2))]
    cfg = compose_config([*SUITE, *same, "student.input=frame", f"student.checkpoint={path}",
                          "student.params={window_size:4,global_attn_indexes:[1],out_chans:32}"])
    student = build_student(load(), cfg, ctx.dataset("digit_scene_events"))
    torch.testing.assert_close(student.model.state_dict(), teacher.model.state_dict())
    # a second load reads the cache: the same weights, nothing trained
    stamp = path.stat().st_mtime_ns
    again = suite_context(load(), [*SUITE, f"home={tmp_path}"]).teacher()
    assert path.stat().st_mtime_ns == stamp
    torch.testing.assert_close(again.model.state_dict(), teacher.model.state_dict())


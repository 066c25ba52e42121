"""Classification evaluators: the linear probe, fine-tuning and their accuracy metrics."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import timm
import torch

from benchbase.components import DataBundle, LabeledImages, Student, Teacher
from benchbase.errors import BenchbaseError
from benchbase.evaluation.classification import (
    FineTune, LinearProbe, accuracy_metrics, binomial_ci95, mae_finetune_model, warmup_cosine,
)

CPU = torch.device("cpu")

from conftest import tensor_images


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2,
        num_classes=0,
    )


def shades(classes: int, per_class: int, seed: int) -> LabeledImages:
    """Noisy images whose class sets their overall brightness (a cue a random ViT keeps)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = 0.3 * torch.randn(labels.numel(), 1, 16, 16, generator=generator)
    return tensor_images(images + (labels.float() - (classes - 1) / 2).view(-1, 1, 1, 1), labels)


def shade_data(classes: int, train: int = 30, test: int = 20) -> DataBundle:
    splits = {"base_train": shades(classes, train, seed=0), "base_test": shades(classes, test, seed=1)}
    return DataBundle("shades", splits, image_size=16, in_chans=1, num_classes=classes)


def test_accuracy_metrics_count_top1_top5_and_binomial_interval():
    scores = torch.tensor([[0.9, 0.1] + [0.0] * 8, [0.1, 0.9] + [0.0] * 8, [0.5, 0.4, 0.3] + [0.0] * 7,
                           [0.0] * 9 + [1.0]])  # 10 classes
    labels = torch.tensor([0, 0, 2, 3])  # top-1 right: row 0; top-5 right: rows 0, 1, 2 (row 3's 3 ties at 0)
    top1, top5 = accuracy_metrics(scores, labels, num_classes=10, protocol="toy")
    assert top1.name == "top1" and top1.value == pytest.approx(25.0) and top1.n == 4
    assert top1.ci95 == pytest.approx(100 * 1.96 * math.sqrt(0.25 * 0.75 / 4))
    assert top5.name == "top5" and top5.value >= 75.0
    assert top1.protocol == "toy; top-1 accuracy, ci95 = binomial 1.96·sqrt(p(1-p)/n) over n=4 test images"
    assert [m.name for m in accuracy_metrics(scores[:, :9], labels, num_classes=9, protocol="toy")] == ["top1"]
    assert binomial_ci95(1.0, 50) == 0.0


def test_linear_probe_on_separable_images():
    data = shade_data(classes=4)
    probe = LinearProbe(train_split="base_train", test_split="base_test")
    metrics = probe.evaluate(Student(tiny_model()), data, CPU)
    assert [m.name for m in metrics] == ["top1"]  # fewer than 10 classes: no top-5
    [top1] = metrics
    assert top1.value > 90
    assert top1.n == 80
    p = top1.value / 100
    assert top1.ci95 == pytest.approx(100 * 1.96 * math.sqrt(p * (1 - p) / 80))
    assert top1.protocol.startswith(
        "linear probe (multinomial logistic regression, lbfgs, max_iter 1000, on standardised frozen cls "
        "features), train split base_train (n=120), test split base_test; top-1 accuracy"
    )


def test_linear_probe_reports_top5_with_ten_classes_and_beats_chance():
    data = shade_data(classes=10, train=12, test=6)
    probe = LinearProbe("base_train", "base_test", pooling="cls+attn")
    top1, top5 = probe.evaluate(Student(tiny_model()), data, CPU)
    assert top5.name == "top5" and top5.n == 60
    assert top5.value >= top1.value > 50  # chance is 10%
    assert "frozen cls+attn features" in top1.protocol


def test_linear_probe_needs_two_training_classes_and_known_splits():
    data = DataBundle("one", {"train": shades(1, 5, 0), "test": shades(1, 5, 1)}, 16, 1, 1)
    with pytest.raises(BenchbaseError, match="needs at least 2 classes"):
        LinearProbe().evaluate(Student(tiny_model()), data, CPU)
    with pytest.raises(BenchbaseError, match="no split 'train'"):
        LinearProbe().evaluate(Student(tiny_model()), shade_data(4), CPU)


def test_finetune_trains_a_copy_and_leaves_the_student_alone():
    data = shade_data(classes=4, train=24, test=10)
    teacher = Teacher(tiny_model())  # frozen weights: fine-tuning must still train them
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    finetune = FineTune(train_split="base_train", test_split="base_test", epochs=4, batch_size=16, lr=2e-3)
    metrics = finetune.evaluate(teacher, data, CPU)
    assert [m.name for m in metrics] == ["top1"]
    assert metrics[0].value > 60  # chance is 25%
    assert metrics[0].n == 40
    assert metrics[0].protocol.startswith(
        "fine-tuning (all weights, new 4-class head; AdamW lr 0.002, weight decay 0.05, cosine decay, batch 16, "
        "4 epochs, seed 0), train split base_train (n=96), test split base_test; top-1 accuracy"
    )
    after = teacher.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert teacher.model.num_classes == 0 and not any(p.requires_grad for p in teacher.model.parameters())
    # seeded: the same run gives the same number and the global random state is untouched
    state = torch.random.get_rng_state()
    assert finetune.evaluate(teacher, data, CPU)[0].value == metrics[0].value
    assert torch.equal(torch.random.get_rng_state(), state)


def test_maes_finetune_model_pools_through_a_new_fc_norm_and_ramps_drop_path():
    model = mae_finetune_model(tiny_model(), num_classes=4, drop_path=0.2)
    assert model.global_pool == "avg" and isinstance(model.fc_norm, torch.nn.LayerNorm)
    assert isinstance(model.norm, torch.nn.Identity) and model.head.out_features == 4
    assert model.head.weight.std() < 1e-4 and torch.equal(model.head.bias, torch.zeros(4))
    assert isinstance(model.blocks[0].drop_path1, torch.nn.Identity)
    assert model.blocks[1].drop_path1.drop_prob == pytest.approx(0.2)  # 0 -> 0.2 over the 2 blocks
    # the pooled feature: the mean of the patch tokens (class token left out) through fc_norm
    x = torch.randn(3, 1, 16, 16)
    model.eval()
    tokens = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), model.fc_norm(tokens[:, 1:].mean(1)))
    with pytest.raises(BenchbaseError, match="recipe=mae needs a timm VisionTransformer"):
        mae_finetune_model(torch.nn.Linear(2, 2), 4, 0.1)


def test_layer_decay_groups_scale_each_depth_as_maes_rule():
    """timm's param_groups_layer_decay, as the MAE recipe calls it: decay^(depth + 1 - layer id), with
    the patch embedding, class token and position embedding at layer 0 and the head at depth + 1."""
    from timm.optim import param_groups_layer_decay

    model = mae_finetune_model(tiny_model(), num_classes=4, drop_path=0.1)
    groups = param_groups_layer_decay(model, 0.05, model.no_weight_decay(), layer_decay=0.5)
    scale = {name: group["lr_scale"] for group in groups for name, param in model.named_parameters()
             if any(param is p for p in group["params"])}
    assert scale["patch_embed.proj.weight"] == scale["cls_token"] == scale["pos_embed"] == pytest.approx(0.125)
    assert scale["blocks.0.attn.qkv.weight"] == pytest.approx(0.25)
    assert scale["blocks.1.mlp.fc2.weight"] == pytest.approx(0.5)
    assert scale["head.weight"] == scale["fc_norm.weight"] == pytest.approx(1.0)
    decay = {name: group["weight_decay"] for group in groups for name, param in model.named_parameters()
             if any(param is p for p in group["params"])}
    assert decay["blocks.0.attn.qkv.weight"] == 0.05 and decay["blocks.0.norm1.weight"] == decay["pos_embed"] == 0.0


def test_mixup_targets_are_the_mixed_smoothed_labels():
    """timm's Mixup as the MAE recipe builds it: batch mode, image = lam x + (1 - lam) x.flip(0), target the
    same mix of label-smoothed one-hot rows (smoothing 0.1 over 4 classes: 0.925 / 0.025)."""
    from timm.data import Mixup

    mixing = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=4)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    mixed, targets = mixing(x.clone(), y)
    lam = float(((mixed - x.flip(0)) / (x - x.flip(0))).flatten()[0])
    smooth = torch.full((4, 4), 0.025) + 0.9 * torch.eye(4)
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))
    torch.testing.assert_close(targets, lam * smooth[y] + (1 - lam) * smooth[y.flip(0)])


def test_finetune_with_maes_recipe_learns_and_names_its_recipe():
    data = shade_data(classes=4, train=24, test=10)
    finetune = FineTune(train_split="base_train", test_split="base_test", epochs=10, batch_size=16, lr=5e-2,
                        recipe="mae", warmup_epochs=1, erasing=0.25, augment=None)  # grey shades: no RGB pixels
    [top1] = finetune.evaluate(Teacher(tiny_model()), data, CPU)
    assert top1.value > 80  # chance is 25%
    assert top1.protocol.startswith("fine-tuning, MAE's recipe from timm's parts (all weights, global average pooling")
    assert "layer decay 0.75" in top1.protocol and "no crop, flip or RandAugment" in top1.protocol
    random.seed(5)  # timm's augmentations draw from Python's and NumPy's streams: seeded by the evaluator's seed
    np.random.seed(5)
    states = random.getstate(), np.random.get_state()[1].copy()
    assert finetune.evaluate(Teacher(tiny_model()), data, CPU)[0].value == top1.value
    assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])  # left as found
    assert warmup_cosine(0, 10, 2, 1.0, 0.0) == 0.0 and warmup_cosine(1, 10, 2, 1.0, 0.0) == 0.5
    assert warmup_cosine(2, 10, 2, 1.0, 0.0) == 1.0 and warmup_cosine(10, 10, 2, 1.0, 0.1) == pytest.approx(0.1)
    with pytest.raises(BenchbaseError, match=r"^finetune recipe=mae: Mixup/CutMix .* must be even; got 15"):
        FineTune(train_split="base_train", test_split="base_test", batch_size=15, recipe="mae", augment=None).evaluate(
            Teacher(tiny_model()), data, CPU)
    # a train split smaller than the batch is one full batch of the whole split, not none
    loader = FineTune(batch_size=512, recipe="mae")._loader(data.split("base_train"), drop_last=True)
    assert len(loader) == 1 and loader.batch_size == 96
    with pytest.raises(BenchbaseError, match=r"^finetune: recipe='timm'; use plain or mae$"):
        FineTune(recipe="timm")
    with pytest.raises(BenchbaseError, match=r"^finetune recipe=mae: augment='rand-m9-mstd0.5-inc1' needs RGB images"
                                             r".* shades has 1 channel\(s\) without image_mean/image_std; set "
                                             r"params.augment=null$"):
        FineTune(train_split="base_train", test_split="base_test", recipe="mae").evaluate(
            Teacher(tiny_model()), data, CPU)


def test_maes_fine_tuning_augments_the_pixels_of_each_image_with_timms_training_transform():
    """MAE's fine-tuning transform (timm's create_transform: RandomResizedCrop, flip, RandAugment)
    acts on each image's pixels, the split's normalisation undone and redone around it: the images
    keep their shape and statistics' scale, differ from the originals, are drawn from Python's seeded
    and torch's streams (the same images for the same seeds) and, with the identity crop and no RandAugment,
    come back as they went in (up to the 8-bit pixels)."""
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    pixels = torch.rand(6, 3, 16, 16)
    images = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    data = DataBundle("rgb", {"train": tensor_images(images, torch.arange(6) % 2)}, image_size=16, in_chans=3,
                      num_classes=2, image_mean=mean, image_std=std)
    augmented = FineTune(recipe="mae")._augmentation(data)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    first = augmented(images)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    assert torch.equal(augmented(images), first)
    assert first.shape == images.shape and not torch.allclose(first, images, atol=0.1)
    assert FineTune(recipe="mae", augment=None)._augmentation(data) is None
    identity = FineTune(recipe="mae", augment="rand-m0-n0", crop_scale=(1.0, 1.0))._augmentation(data)
    same = identity(images)  # flipped or not, each image is itself: compare with both
    flipped = images.flip(-1)
    for out, image, mirror in zip(same, images, flipped):
        error = min((out - image).abs().max(), (out - mirror).abs().max())
        assert error < 0.5 / 255 / min(std) + 1e-4


def test_randaugments_strongest_posterize_gives_the_black_image_instead_of_an_error():
    """timm's posterize at magnitude 10 keeps 0 bits; Pillow >= 10 raises there, older Pillow and
    TensorFlow's RandAugment gave a black image: so does the fine-tuning transform's."""
    from PIL import Image

    from benchbase.evaluation.classification import posterize

    image = Image.fromarray(np.full((4, 4, 3), 200, dtype=np.uint8))
    assert np.array_equal(np.asarray(posterize(image, 0)), np.zeros((4, 4, 3), dtype=np.uint8))
    assert np.asarray(posterize(image, 1)).max() == 128 and posterize(image, 8) is image
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    data = DataBundle("rgb", {"train": tensor_images(torch.zeros(2, 3, 8, 8), torch.arange(2))}, image_size=8,
                      in_chans=3, num_classes=2, image_mean=mean, image_std=std)
    strongest = FineTune(recipe="mae", augment="rand-n1-m10-mstd0-inc1", crop_scale=(1.0, 1.0))._augmentation(data)
    for seed in range(40):  # every operation at magnitude 10, posterize among them
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        assert strongest(torch.zeros(2, 3, 8, 8)).shape == (2, 3, 8, 8)

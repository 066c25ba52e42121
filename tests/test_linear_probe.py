"""Classification evaluators: the linear probe, fine-tuning and their accuracy metrics."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from benchbase.components import DataBundle, LabeledImages, Student, Teacher
from benchbase.errors import BenchbaseError
from benchbase.evaluation.classification import FineTune, LinearProbe, accuracy_metrics, binomial_ci95

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

"""The embedded digit scenes: shapes, labels that follow the pasted ink, determinism, disjoint sources."""

from __future__ import annotations

import pytest
import torch

from benchbase.data.scenes import CLASSES, INK_THRESHOLD, compose_scenes, load_digit_scenes
from benchbase.errors import BenchbaseError


@pytest.fixture(scope="module")
def scenes():
    return load_digit_scenes(n_train=60, n_test=20, seed=3)


def test_splits_have_images_and_label_maps_of_the_canvas_size(scenes):
    assert scenes.num_classes == 11 and scenes.ignore_index is None and scenes.in_chans == 1
    assert scenes.image_size == 32 and list(scenes.splits) == ["train", "test"]
    assert CLASSES == ["background", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    for name, n in (("train", 60), ("test", 20)):
        split = scenes.split(name)
        assert split.images.shape == (n, 1, 32, 32) and split.images.dtype == torch.float32
        assert split.labels.shape == (n, 32, 32) and split.labels.dtype == torch.long
        assert split.classes == CLASSES and len(split) == n
        image, label = split[0]
        assert image.shape == (1, 32, 32) and label.shape == (32, 32)
        assert 0 <= int(split.labels.min()) and int(split.labels.max()) <= 10
    train = scenes.split("train")
    assert train.images.mean().abs() < 1e-4 and (train.images.std() - 1).abs() < 1e-3  # train statistics
    assert len(train.labels.unique()) == 11  # background and every digit occur


def test_digit_labels_lie_exactly_on_the_bright_pixels(scenes):
    for split in scenes.splits.values():
        foreground = split.labels > 0
        # standardising is increasing, so labelled ink is brighter than any background pixel
        assert split.images[:, 0][foreground].min() > split.images[:, 0][~foreground].max()
        per_scene = foreground.flatten(1).sum(dim=1)
        assert per_scene.min() > 0  # every scene has at least one digit


def test_later_digits_are_pasted_on_top():
    zero, one = torch.zeros(4, 4), torch.zeros(4, 4)
    zero[:, :2] = 1.0  # digit 0 (class 1) inks the left half
    one[:2, :] = 0.8  # digit 1 (class 2) inks the top half
    one[3, 3] = 0.1  # ink below the threshold: brighter canvas, no label
    # the canvas is the digit size, so both digits of a scene land at the same place
    canvases, labels = compose_scenes(
        torch.stack([zero, one]), torch.tensor([0, 1]), count=40, image_size=4, digits_per_scene=(2, 2),
        generator=torch.Generator().manual_seed(0),
    )
    assert canvases.shape == (40, 1, 4, 4) and labels.shape == (40, 4, 4)
    one_over_zero = (
        torch.tensor([[2, 2, 2, 2], [2, 2, 2, 2], [1, 1, 0, 0], [1, 1, 0, 0]]),
        torch.tensor([[0.8, 0.8, 0.8, 0.8], [0.8, 0.8, 0.8, 0.8], [1, 1, 0, 0], [1, 1, 0, 0.1]]),
    )
    zero_over_one = (
        torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 0, 0], [1, 1, 0, 0]]),
        torch.tensor([[1, 1, 0.8, 0.8], [1, 1, 0.8, 0.8], [1, 1, 0, 0], [1, 1, 0, 0.1]]),
    )
    zero_twice = ((zero > 0).long(), zero)
    one_twice = (2 * (one > INK_THRESHOLD).long(), one)
    seen = []
    for canvas, label in zip(canvases[:, 0], labels):
        matches = [
            name
            for name, (want_label, want_canvas) in {
                "1 over 0": one_over_zero, "0 over 1": zero_over_one, "0, 0": zero_twice, "1, 1": one_twice
            }.items()
            if torch.equal(label, want_label) and torch.allclose(canvas, want_canvas)
        ]
        assert len(matches) == 1
        seen += matches
    assert {"1 over 0", "0 over 1"} <= set(seen)


def test_same_seed_same_scenes_other_seed_other_scenes():
    first = load_digit_scenes(n_train=10, n_test=5, seed=1)
    again = load_digit_scenes(n_train=10, n_test=5, seed=1)
    other = load_digit_scenes(n_train=10, n_test=5, seed=2)
    for name in ("train", "test"):
        assert torch.equal(first.split(name).images, again.split(name).images)
        assert torch.equal(first.split(name).labels, again.split(name).labels)
        assert not torch.equal(first.split(name).labels, other.split(name).labels)


def test_train_and_test_scenes_use_disjoint_source_digits():
    # one digit filling the whole canvas: every scene is exactly one source image (no two of the
    # 1,797 digits are identical), so shared scenes would mean shared source digits
    bundle = load_digit_scenes(image_size=16, digit_size=16, digits_per_scene=(1, 1), n_train=600, n_test=200)
    train = {tuple(image.flatten().tolist()) for image in bundle.split("train").images}
    test = {tuple(image.flatten().tolist()) for image in bundle.split("test").images}
    assert len(train) > 300 and len(test) > 100  # many distinct digits on both sides
    assert train.isdisjoint(test)


def test_bad_scene_parameters_are_reported():
    with pytest.raises(BenchbaseError, match="digits_per_scene"):
        load_digit_scenes(digits_per_scene=(3, 1))
    with pytest.raises(BenchbaseError, match="digit_size"):
        load_digit_scenes(image_size=8)

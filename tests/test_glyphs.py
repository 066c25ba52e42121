"""The procedural glyphs (the default suite's data): splits, determinism, rendering, segmentation labels."""

from __future__ import annotations

import pytest
import torch

from benchbase.data.glyphs import (
    MAX_STROKES,
    draw_instances,
    glyph_classes,
    load_glyph_scenes,
    load_glyphs,
    render,
)
from benchbase.errors import BenchbaseError

SMALL = dict(base=6, novel_val=5, novel=7, per_class_train=4, per_class_test=2, per_class_novel=3)


@pytest.fixture(scope="module")
def glyphs():
    return load_glyphs(**SMALL)


def test_splits_hold_the_classes_and_instances_they_name(glyphs):
    assert glyphs.num_classes == 6 and glyphs.in_chans == 1 and glyphs.image_size == 16
    assert list(glyphs.splits) == ["base_train", "base_val", "base_test", "novel_val", "novel"]
    expected = {"base_train": (range(6), 4), "base_val": (range(6), 2), "base_test": (range(6), 2),
                "novel_val": (range(6, 11), 3), "novel": (range(11, 18), 3)}
    for name, (classes, per_class) in expected.items():
        split = glyphs.split(name)
        assert split.images.shape == (len(classes) * per_class, 1, 16, 16)
        assert split.labels.tolist() == [c for c in classes for _ in range(per_class)]
        assert len(split.classes) == 18
    train = glyphs.split("base_train").images
    assert train.mean().abs() < 1e-4 and (train.std() - 1).abs() < 1e-3  # standardised with base_train's statistics


def test_the_same_seeds_give_the_same_images_and_another_split_seed_other_instances(glyphs):
    again = load_glyphs(**SMALL)
    for name, split in glyphs.splits.items():
        assert torch.equal(split.images, again.split(name).images)
    other = load_glyphs(**SMALL, split_seed=1)
    assert not torch.allclose(other.split("base_train").images, glyphs.split("base_train").images)


def test_glyph_c_does_not_depend_on_how_many_glyphs_are_drawn():
    few, few_used = glyph_classes(3, torch.Generator().manual_seed(5))
    many, many_used = glyph_classes(9, torch.Generator().manual_seed(5))
    assert torch.equal(few, many[:3]) and torch.equal(few_used, many_used[:3])
    assert few.shape == (3, MAX_STROKES, 3, 2) and (many_used.sum(1) >= 2).all()
    assert ((0 <= many) & (many <= 1)).all()


def test_render_inks_a_straight_stroke_with_its_width():
    # a horizontal line through row 8's pixel centres, half-width 3/4 of a pixel
    line = torch.tensor([[[[0.2, 0.53125], [0.5, 0.53125], [0.8, 0.53125]]]])  # [1, 1, 3, 2]
    ink = render(line, torch.tensor([[True]]), torch.tensor([0.75 / 16]), 16)[0]
    assert ink.shape == (16, 16) and ((0 <= ink) & (ink <= 1)).all()
    assert (ink[8, 3:13] == 1).all() and ink[8, 0] == 0  # on the stroke; beyond its end
    assert (ink[:7] == 0).all() and (ink[10:] == 0).all()  # rows away from it stay blank
    # a pixel centre one pixel off the stroke's axis lies 1/4 pixel beyond its edge: ink 1/2 - 1/4
    assert torch.allclose(ink[7, 3:13], torch.tensor(0.25)) and torch.allclose(ink[9, 3:13], torch.tensor(0.25))
    unused = render(line, torch.tensor([[False]]), torch.tensor([0.75 / 16]), 16)
    assert (unused == 0).all()


def test_instances_of_a_class_vary_and_without_nuisance_coincide():
    points, used = glyph_classes(2, torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1])
    varied = draw_instances(points, used, labels, 16, torch.Generator().manual_seed(0))
    assert not torch.equal(varied[0], varied[1])
    still = dict(jitter=0.0, rotation=0.0, scale=(1.0, 1.0), shear=0.0, shift=0.0, width=(0.05, 0.05))
    same = draw_instances(points, used, labels, 16, torch.Generator().manual_seed(0), **still)
    assert torch.equal(same[0], same[1]) and not torch.equal(same[0], same[2])


def test_scenes_label_the_inked_pixels_with_the_first_base_glyphs(glyphs):
    scenes = load_glyph_scenes(classes=3, n_train=30, n_val=10, n_test=12, halo=0)
    assert scenes.num_classes == 4 and scenes.ignore_index is None and list(scenes.splits) == ["train", "val", "test"]
    assert scenes.split("train").classes == ["background", "glyph0", "glyph1", "glyph2"]
    for split in scenes.splits.values():
        assert split.labels.shape == (len(split), 16, 16) and split.images.shape == (len(split), 1, 16, 16)
        foreground = split.labels > 0
        # standardising is increasing: labelled ink is brighter than every background pixel
        assert split.images[:, 0][foreground].min() > split.images[:, 0][~foreground].max()
        assert (foreground.flatten(1).sum(1) > 0).all()  # every image shows its glyph
        glyph = split.labels.flatten(1).max(1).values.view(-1, 1, 1)
        assert ((split.labels == 0) | (split.labels == glyph)).all()  # one glyph class per image
    # scene class c is base glyph c: both come from glyph_classes with the same class_seed
    points, _ = glyph_classes(3, torch.Generator().manual_seed(0))
    assert torch.equal(points, glyph_classes(SMALL["base"], torch.Generator().manual_seed(0))[0][:3])


def test_the_halo_labels_the_pixels_next_to_the_ink():
    ink = load_glyph_scenes(classes=3, n_train=30, n_val=1, n_test=1, halo=0).split("train").labels
    halo = load_glyph_scenes(classes=3, n_train=30, n_val=1, n_test=1).split("train").labels
    assert ((ink == 0) | (halo == ink)).all()  # the same images: every inked label kept
    grown = torch.nn.functional.max_pool2d((ink > 0).float().unsqueeze(1), 3, stride=1, padding=1).squeeze(1) > 0
    assert torch.equal(halo > 0, grown) and (halo > 0).sum() > 1.5 * (ink > 0).sum()


def test_empty_splits_are_refused():
    with pytest.raises(BenchbaseError, match="at least one class"):
        load_glyphs(base=0)
    with pytest.raises(BenchbaseError, match="classes >= 1"):
        load_glyph_scenes(n_val=0)
    with pytest.raises(BenchbaseError, match="halo >= 0"):
        load_glyph_scenes(halo=-1)

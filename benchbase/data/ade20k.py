"""ADE20K (the SceneParsing / ADEChallengeData2016 release), 150 classes.

Layout (``root`` is ``ADEChallengeData2016/`` or the folder holding it)::

    images/{training,validation}/<name>.jpg
    annotations/{training,validation}/<name>.png   0 = unlabelled, 1..150 = classes

Splits ``train`` (20,210 images in the full release) and ``val`` (2,000). Labels follow mmseg's
``reduce_zero_label`` convention: class ``k`` (1..150 on disk) becomes id ``k - 1`` (0..149) and
the unlabelled value 0 becomes 255, the bundle's ``ignore_index``. Images are resized bilinearly
to ``image_size``² (default 224, the students' resolution, like CamVid's; mmseg's protocol uses
512) and normalised with ImageNet statistics; label maps are resized with nearest neighbour to
``params.label_size``² (default: ``image_size``). Scoring reads the image with its short side at
``image_size`` (aspect ratio kept) and the label map at its original resolution, as CamVid's
(:class:`~benchbase.data.camvid.LazySegmentation`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from benchbase.components import DataBundle, DatasetInfo
from benchbase.data.camvid import LazySegmentation, pair_by_stem, segmentation_settings
from benchbase.data.folders import IMAGENET_MEAN, IMAGENET_STD, check_root
from benchbase.errors import BenchbaseError

IGNORE = 255
SPLIT_FOLDERS = {"train": "training", "val": "validation"}
LAYOUT = "images/{training,validation}/*.jpg and annotations/{training,validation}/*.png (ADEChallengeData2016)"
INFO = DatasetInfo(layout=LAYOUT, kind="segmentation", splits={
    "train": "images/training/ (20,210 images in the full release)",
    "val": "images/validation/ (2,000 images)",
})
CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)


def reduce_zero_label(label: Tensor) -> Tensor:
    """ADE's on-disk ids [H, W] (0 = unlabelled, 1..150) as class ids 0..149 with 255 for unlabelled."""
    return torch.where(label == 0, IGNORE, label - 1)


def build_ade20k(cfg: Mapping[str, Any]) -> DataBundle:
    """ADE20K with the splits present among ``train`` and ``val``."""
    root = check_root(cfg.get("root"), "ade20k", LAYOUT)
    ade = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
    image_size, label_size, on_corrupt = segmentation_settings(cfg, "ade20k", 224)
    splits = {
        split: LazySegmentation(pair_by_stem(ade / "images" / folder, ade / "annotations" / folder), CLASSES,
                                image_size, label_size, on_corrupt, relabel=reduce_zero_label)
        for split, folder in SPLIT_FOLDERS.items()
        if (ade / "images" / folder).is_dir()
    }
    if not splits:
        raise BenchbaseError(f"{root} has no images/training or images/validation folder; expected {LAYOUT}")
    sizes = ", ".join(f"{name} {len(data)}" for name, data in splits.items())
    return DataBundle(
        name="ade20k", splits=splits, image_size=image_size, in_chans=3, num_classes=len(CLASSES),
        ignore_index=IGNORE, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
        description=f"ADE20K at {ade}: {sizes} images, 150 classes (ids = ADE ids - 1, unlabelled = 255), "
        f"images {image_size}x{image_size}, labels {label_size}x{label_size}",
    )

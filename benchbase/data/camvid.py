"""CamVid in SegNet's layout, and the lazy segmentation dataset that ADE20K reuses.

Layout (``root`` is the folder holding ``CamVid/`` or ``CamVid/`` itself)::

    CamVid/{train,val,test}/<frame>.png        RGB frames
    CamVid/{train,val,test}annot/<frame>.png   class ids 0..10, 11 = void
    CamVid/{train,val,test}.txt                optional: "<image> <label>" per line

When a list file is present its pairs are used: relative paths are read from ``CamVid/``, and
SegNet's original absolute paths (``/SegNet/CamVid/train/x.png``) fall back to their last two parts
under ``CamVid/``. Otherwise ``<split>/`` is paired with ``<split>annot/`` by file name.

Classes (ids 0..10): Sky, Building, Pole, Road, Pavement, Tree, SignSymbol, Fence, Car, Pedestrian,
Bicyclist; 11 is void, the bundle's ``ignore_index``. SegNet's copy has 367 train, 101 val and
233 test frames. Items (what training and distillation read): images resized bilinearly to
``image_size``² (default 224) and normalised with ImageNet statistics, label maps resized with
nearest neighbour to ``params.label_size``² (default: ``image_size``). Scoring reads
``evaluation_item``: the image with its short side resized to ``image_size``, aspect ratio kept
(:func:`~benchbase.data.folders.short_side_size`: 480x360 frames become 299x224 at 224, 85x64 at
64), and the label map at its original resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor
from torchvision.transforms import functional as TF

from benchbase.components import DataBundle, DatasetInfo, SegmentationImages
from benchbase.data.folders import (
    IMAGE_SUFFIXES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_root,
    dataset_params,
    drop_unreadable,
    image_tensor,
    read_image,
    short_side_size,
)
from benchbase.errors import BenchbaseError

CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist")
VOID = 11
SPLIT_SIZES = {"train": 367, "val": 101, "test": 233}
LAYOUT = "CamVid/{train,val,test}/ and CamVid/{train,val,test}annot/ (SegNet's layout)"
INFO = DatasetInfo(layout=LAYOUT, kind="segmentation",
                   splits={split: f"{split}/ and {split}annot/ ({size} frames in SegNet's copy)"
                           for split, size in SPLIT_SIZES.items()})
LABEL_MODES = ("1", "L", "P", "I", "I;16")

Pair = tuple[Path, Path]


class LazySegmentation(SegmentationImages):
    """(image file, label map file) pairs, decoded on access.

    Args:
        pairs: (image path, label path); a label must have its image's width and height.
        classes: class names (label id i is ``classes[i]``).
        image_size: side of the square RGB images returned (bilinear, ImageNet-normalised).
        label_size: side of the square [H, W] long label maps returned (nearest neighbour).
        on_corrupt: ``error`` or ``skip`` (unreadable or mismatched pairs are dropped now and
            listed in ``skipped``).
        relabel: maps a label map's raw values to class ids (e.g. :func:`benchbase.data.ade20k.
            reduce_zero_label`); a module-level function so that DataLoader workers can pickle it.
        sequence_of: an image path's recording (e.g. :func:`camvid_sequence`); None: each image
            stands alone.
    """

    def __init__(self, pairs: Sequence[Pair], classes: Sequence[str], image_size: int, label_size: int,
                 on_corrupt: str = "error", relabel: Callable[[Tensor], Tensor] | None = None,
                 sequence_of: Callable[[Path], str | None] | None = None):
        self.classes = list(classes)
        self.image_size, self.label_size, self.relabel = image_size, label_size, relabel
        self.sequence_of = sequence_of
        self.pairs, self.skipped = drop_unreadable(pairs, self._read, on_corrupt)

    @staticmethod
    def _read(pair: Pair) -> tuple[Image.Image, Image.Image]:
        """The decoded RGB image and label map; a colour label or a size mismatch is a one-line error."""
        image_path, label_path = pair
        image, label = read_image(image_path, 3), read_image(label_path, None)
        if label.mode not in LABEL_MODES:
            raise BenchbaseError(
                f"label map {label_path} is a {label.mode} image; expected a single-channel PNG of class ids"
            )
        if label.size != image.size:
            raise BenchbaseError(
                f"label map {label_path} is {label.width}x{label.height} but its image {image_path} is "
                f"{image.width}x{image.height}; replace the label or remove the pair"
            )
        return image, label

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self._read(self.pairs[index])
        label = TF.pil_to_tensor(label.resize((self.label_size, self.label_size), Image.NEAREST))[0].long()
        return image_tensor(image, self.image_size), label if self.relabel is None else self.relabel(label)

    def evaluation_item(self, index: int) -> tuple[Tensor, Tensor]:
        """(image with its short side at ``image_size``, aspect ratio kept; label map as stored)."""
        image, label = self._read(self.pairs[index])
        label = TF.pil_to_tensor(label)[0].long()
        label = label if self.relabel is None else self.relabel(label)
        return image_tensor(image, self.image_size, keep_ratio=True), label

    def resized_shape(self, index: int) -> tuple[int, int]:
        with Image.open(self.pairs[index][0]) as image:  # reads the header only
            return short_side_size(image.height, image.width, self.image_size)

    def sequence(self, index: int) -> str | None:
        return None if self.sequence_of is None else self.sequence_of(Path(self.pairs[index][0]))


def camvid_sequence(path: Path) -> str | None:
    """The CamVid recording of a frame file: its name before the last ``_`` (``0001TP_006690.png``
    -> ``0001TP``, ``Seq05VD_f00000.png`` -> ``Seq05VD``); None for a name without one."""
    stem = path.stem
    return stem.rsplit("_", 1)[0] if "_" in stem else None


def pair_by_stem(image_dir: Path, label_dir: Path) -> list[Pair]:
    """Every image in ``image_dir`` with the label in ``label_dir`` of the same stem (any suffix)."""
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise BenchbaseError(f"{folder} is not a folder; expected images in {image_dir} and labels in {label_dir}")
    labels = {p.stem: p for p in label_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise BenchbaseError(f"{image_dir} has no images")
    missing = [p for p in images if p.stem not in labels]
    if missing:
        raise BenchbaseError(
            f"{len(missing)} image(s) in {image_dir} have no label in {label_dir} (first: {missing[0].name}); "
            "add the labels or remove the images"
        )
    return [(p, labels[p.stem]) for p in images]


def _listed_path(camvid: Path, entry: str, listing: Path, line: int) -> Path:
    """``entry`` of a list file, relative to ``camvid`` or, failing that, its last two parts under ``camvid``."""
    path = Path(entry)
    for candidate in (camvid / path, camvid.joinpath(*path.parts[-2:])):
        if candidate.is_file():
            return candidate
    raise BenchbaseError(
        f"{listing} line {line}: {entry} not found under {camvid}; fix the list file, or delete it to pair "
        "the split's folders by file name"
    )


def listed_pairs(camvid: Path, listing: Path) -> list[Pair]:
    """The (image, label) pairs of a SegNet list file (``<image> <label>`` per line)."""
    pairs = []
    for line, text in enumerate(listing.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        fields = text.split()
        if len(fields) != 2:
            raise BenchbaseError(f"{listing} line {line} is {text!r}; expected '<image path> <label path>'")
        pairs.append((_listed_path(camvid, fields[0], listing, line), _listed_path(camvid, fields[1], listing, line)))
    if not pairs:
        raise BenchbaseError(f"{listing} lists no images; fill it in, or delete it to pair the split's folders by name")
    return pairs


def segmentation_settings(cfg: Mapping[str, Any], dataset: str, default_size: int) -> tuple[int, int, str]:
    """(image_size, label_size, on_corrupt) of a segmentation dataset's config (``params.label_size`` only)."""
    image_size = cfg.get("image_size") or default_size
    label_size = dataset_params(cfg, dataset, {"label_size": None})["label_size"] or image_size
    return image_size, label_size, cfg.get("on_corrupt", "error")


def build_camvid(cfg: Mapping[str, Any]) -> DataBundle:
    """CamVid (SegNet's copy) with the splits present among ``train``, ``val`` and ``test``."""
    root = check_root(cfg.get("root"), "camvid", LAYOUT)
    camvid = root / "CamVid" if (root / "CamVid").is_dir() else root
    image_size, label_size, on_corrupt = segmentation_settings(cfg, "camvid", 224)
    splits = {}
    for split in SPLIT_SIZES:
        listing = camvid / f"{split}.txt"
        if listing.is_file():
            pairs = listed_pairs(camvid, listing)
        elif (camvid / split).is_dir():
            pairs = pair_by_stem(camvid / split, camvid / f"{split}annot")
        else:
            continue
        splits[split] = LazySegmentation(pairs, CLASSES, image_size, label_size, on_corrupt, sequence_of=camvid_sequence)
    if not splits:
        raise BenchbaseError(f"{root} has no CamVid split (train/, val/, test/ or their .txt lists); expected {LAYOUT}")
    sizes = ", ".join(f"{name} {len(data)}" for name, data in splits.items())
    return DataBundle(
        name="camvid", splits=splits, image_size=image_size, in_chans=3, num_classes=len(CLASSES),
        ignore_index=VOID, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
        description=f"CamVid (SegNet) at {camvid}: {sizes} frames, 11 classes + void (11), "
        f"images {image_size}x{image_size}, labels {label_size}x{label_size}",
    )

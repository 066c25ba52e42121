"""Images on disk, read lazily: the shared lazy dataset and the ImageFolder layout (ImageNet-1K's).

:class:`LazyImages` serves every on-disk classification loader (ImageFolder, Omniglot, the few-shot
layouts): it holds (file, label) pairs and decodes an image only when it is read, converts it to
RGB (or grayscale for ``in_chans=1``), resizes it to ``image_size`` and normalises it with
ImageNet statistics (0.5/0.5 for one channel); an evaluation view (:class:`ResizeCrop`) then
resizes and centre-crops the square image as SMKD's evaluation does. A file is a path or a
:class:`ZipMember` (an image inside a zip archive, read without extracting it).

The ImageFolder layout is ``root/<split>/<class>/<image>`` with splits such as ``train`` and
``val``. A missing path, a path that is a file, an empty class folder and an undecodable image are
one-line errors; ``on_corrupt=skip`` skips unreadable images instead, after checking every file
once, and lists them in the dataset's ``skipped``.
"""

from __future__ import annotations

import copy
import functools
import io
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Union

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from benchbase.components import DataBundle, DatasetInfo, LabeledImages
from benchbase.data.tensors import stratified_split
from benchbase.errors import BenchbaseError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ON_CORRUPT = ("error", "skip")

T = TypeVar("T")


@dataclass(frozen=True)
class ZipMember:
    """The file ``name`` inside the zip archive ``archive``."""

    archive: Path
    name: str

    def __str__(self) -> str:
        return f"{self.archive}/{self.name}"

    def read_bytes(self) -> bytes:
        return _open_zip(self.archive, os.getpid()).read(self.name)


@functools.lru_cache(maxsize=16)
def _open_zip(archive: Path, pid: int) -> zipfile.ZipFile:
    """One open handle per archive and process: forked DataLoader workers must not share a file offset."""
    return zipfile.ZipFile(archive)


ImageSource = Union[Path, ZipMember]


def check_root(root: str | None, dataset: str, layout: str) -> Path:
    """``root`` as a Path, or a one-line error telling the user how to pass it."""
    if not root:
        raise BenchbaseError(f"dataset {dataset!r} needs a path: pass data.{dataset}.root=PATH ({layout})")
    path = Path(root).expanduser()
    if not path.exists():
        raise BenchbaseError(f"data.{dataset}.root={root} does not exist; pass the folder that holds {layout}")
    if not path.is_dir():
        raise BenchbaseError(f"data.{dataset}.root={root} is a file, not a folder; pass the folder that holds {layout}")
    return path


def dataset_params(cfg: Mapping[str, Any], dataset: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg.params`` over ``defaults``; a key not in ``defaults`` is a one-line error listing the known ones."""
    given = dict(cfg.get("params") or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise BenchbaseError(
            f"data.{dataset}.params has unknown key(s) {', '.join(unknown)}; known: {', '.join(defaults)}"
        )
    return {**defaults, **given}


def read_image(source: ImageSource, in_chans: int | None = 3) -> Image.Image:
    """Decode ``source`` fully; a corrupt or truncated file is a one-line error naming it.

    The image is converted to grayscale (``in_chans=1``) or RGB; ``in_chans=None`` keeps the stored
    mode (label maps, whose pixel values or palette indices are class ids).
    """
    try:
        with Image.open(io.BytesIO(source.read_bytes())) as img:
            img.load()
            return img if in_chans is None else img.convert("L" if in_chans == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise BenchbaseError(
            f"cannot read image {source} ({type(exc).__name__}: {exc}); replace or remove it, "
            "or pass data.<name>.on_corrupt=skip"
        ) from None


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) of a ``height`` x ``width`` image resized so its short side is ``size``,
    keeping the aspect ratio: every side times ``size / min(height, width)``, rounded half up, as
    mmcv's ``rescale_size`` (mmsegmentation's ``Resize(keep_ratio=True)``) rounds; 360x480 at 224
    becomes 224x299 (torchvision's ``Resize(224)`` truncates to 224x298)."""
    scale = size / min(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def folder_normalisation(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel that :func:`image_tensor` normalises ``in_chans``-channel images with:
    ImageNet's for RGB (3), 0.5 and 0.5 for grayscale (1; the pixels then span [-1, 1])."""
    return (IMAGENET_MEAN, IMAGENET_STD) if in_chans == 3 else ((0.5,), (0.5,))


@dataclass(frozen=True)
class ResizeCrop:
    """An evaluation view: the image's short side resized to ``resize`` (bicubic, aspect ratio
    kept) and its centre ``crop`` x ``crop`` cut out, as torchvision's ``Resize(resize,
    interpolation=BICUBIC)`` then ``CenterCrop(crop)`` (SMKD's ``eval_smkd.py``)."""

    resize: int
    crop: int

    def __call__(self, img: Image.Image) -> Image.Image:
        """``img`` (any size) -> a ``crop`` x ``crop`` image."""
        return TF.center_crop(TF.resize(img, self.resize, InterpolationMode.BICUBIC), self.crop)


def image_tensor(img: Image.Image, image_size: int, keep_ratio: bool = False, view: ResizeCrop | None = None
                 ) -> Tensor:
    """[C, H, W] float: ``img`` (L or RGB) resized bilinearly to ``image_size``² (with
    ``keep_ratio``: its short side to ``image_size``, :func:`short_side_size`), then through
    ``view`` if given ([C, crop, crop]), and normalised with ImageNet statistics (mean 0.5, std 0.5
    for one channel)."""
    if keep_ratio:
        height, width = short_side_size(img.height, img.width, image_size)
        img = img.resize((width, height), Image.BILINEAR)
    else:
        img = img.resize((image_size, image_size), Image.BILINEAR)
    if view is not None:
        img = view(img)
    mean, std = folder_normalisation(3 if img.mode == "RGB" else 1)
    return TF.normalize(TF.pil_to_tensor(img).float() / 255.0, mean, std)


def drop_unreadable(items: Sequence[T], read: Callable[[T], object], on_corrupt: str) -> tuple[list[T], list[T]]:
    """(kept, skipped) ``items``.

    With ``on_corrupt=skip`` every item is ``read`` once now and those raising
    :class:`BenchbaseError` are skipped; with ``error`` nothing is read now (the first unreadable
    item raises when the dataset reads it).
    """
    if on_corrupt not in ON_CORRUPT:
        raise BenchbaseError(f"on_corrupt={on_corrupt!r}; use error or skip")
    if on_corrupt == "error":
        return list(items), []
    kept, skipped = [], []
    for item in items:
        try:
            read(item)
            kept.append(item)
        except BenchbaseError:
            skipped.append(item)
    return kept, skipped


class LazyImages(LabeledImages):
    """Labelled image files, decoded on access (see the module docstring).

    Args:
        samples: (file, label) pairs; labels index ``classes``.
        classes: class names.
        image_size: side of the square images returned (without ``view``), or that ``view`` starts from.
        in_chans: 1 (grayscale) or 3 (RGB; grayscale files repeat their channel).
        on_corrupt: ``error`` or ``skip`` (unreadable files are dropped now and listed in ``skipped``).
        class_groups: the group of each class, if the classes come in groups.
        view: an evaluation view of the square images (their size is then ``view.crop``).
    """

    def __init__(self, samples: Sequence[tuple[ImageSource, int]], classes: Sequence[str], image_size: int,
                 in_chans: int = 3, on_corrupt: str = "error", class_groups: Sequence[str] | None = None,
                 view: ResizeCrop | None = None):
        if in_chans not in (1, 3):
            raise BenchbaseError(f"in_chans={in_chans}; images are read as 1 (grayscale) or 3 (RGB) channels")
        self.classes = list(classes)
        self.class_groups = None if class_groups is None else list(class_groups)
        self.image_size, self.in_chans, self.view = image_size, in_chans, view
        self.samples, skipped = drop_unreadable(samples, lambda sample: read_image(sample[0], in_chans), on_corrupt)
        self.skipped: list[ImageSource] = [source for source, _ in skipped]
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        source, label = self.samples[index]
        return image_tensor(read_image(source, self.in_chans), self.image_size, view=self.view), label

    def subset(self, indices: Sequence[int] | Tensor) -> LazyImages:
        """The samples at ``indices`` with the same classes (nothing is re-checked; ``skipped`` is empty)."""
        return self.reading([self.samples[int(i)] for i in indices], self.classes, self.class_groups)

    def reading(self, samples: Sequence[tuple[ImageSource, int]], classes: Sequence[str],
                class_groups: Sequence[str] | None = None) -> LazyImages:
        """``samples`` prepared as this split prepares its images (size, channels, view); nothing is checked."""
        return LazyImages(samples, classes, self.image_size, self.in_chans, class_groups=class_groups, view=self.view)

    def prepared(self, image_size: int, view: ResizeCrop | None = None) -> LazyImages:
        """This split with its images as ``image_size``² squares, through ``view`` if given (a copy:
        the same samples, classes and ``skipped``; nothing is re-checked)."""
        prepared = copy.copy(self)
        prepared.image_size, prepared.view = image_size, view
        return prepared

    def split_per_class(self, fraction: float, seed: int) -> tuple[LazyImages, LazyImages]:
        """A seeded per-class split: ``fraction`` of every class's images, and the rest."""
        first, second = stratified_split(torch.tensor(self.targets, dtype=torch.long), fraction, seed)
        return self.subset(first), self.subset(second)


def scan_class_folders(folder: Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, (image path, label) pairs) of ``folder/<class>/<image>``; classes sorted by name
    unless given. A folder without classes or a class folder without images is a one-line error."""
    if not folder.is_dir():
        raise BenchbaseError(f"{folder} is not a folder; expected {folder}/<class>/<image>")
    classes = list(classes or sorted(p.name for p in folder.iterdir() if p.is_dir()))
    if not classes:
        raise BenchbaseError(f"{folder} has no class folders; expected {folder}/<class>/<image>")
    samples: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        files = sorted(p for p in (folder / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise BenchbaseError(f"class folder {folder / name} has no images; remove it or add images")
        samples.extend((p, index) for p in files)
    return classes, samples


class ImageFolderSplit(LazyImages):
    """One split folder: ``<split>/<class>/<image>``; classes sorted by name unless given."""

    def __init__(self, folder: Path, image_size: int, in_chans: int = 3, on_corrupt: str = "error",
                 classes: list[str] | None = None):
        classes, samples = scan_class_folders(folder, classes)
        super().__init__(samples, classes, image_size, in_chans, on_corrupt)


IMAGE_FOLDER_DEFAULTS = {"in_chans": 3, "holdout_fraction": None, "max_per_class": None, "minival_fraction": None,
                         "split_seed": 0}
IMAGE_FOLDER_LAYOUT = "train/<class>/<image> (ImageFolder layout)"
IMAGE_FOLDER_INFO = DatasetInfo(layout=f"{IMAGE_FOLDER_LAYOUT}, optionally val/ and test/ alike", splits={
    "train": "train/ (params.max_per_class keeps that many images of each class)",
    "val": "val/, or params.holdout_fraction of each class of train/ when there is no val/",
    "test": "test/, when present",
    "minival": "params.minival_fraction of each class of train/ (after the val holdout), for choosing recipes",
})


def load_image_folder(cfg: Mapping[str, Any], name: str = "imagefolder", default_size: int = 224) -> DataBundle:
    """Every split folder under ``cfg.root`` (``train``, ``val``, ``test``: those present).

    Params: ``in_chans``; ``max_per_class`` keeps the first N images of each class of ``train``
    (after a seeded shuffle); ``holdout_fraction`` makes a ``val`` split from that share of each
    class of ``train`` when the data set ships no ``val/`` (e.g. CIFAR-10's training set alone);
    ``minival_fraction`` then moves that share of each class of what remains of ``train`` into a
    ``minival`` split: a validation split for choosing recipes that never touches ``val`` (the
    images a suite is scored on), as ImageNet papers hold out a "minival" part of the training set.
    """
    root = check_root(cfg.get("root"), name, IMAGE_FOLDER_LAYOUT)
    params = dataset_params(cfg, name, IMAGE_FOLDER_DEFAULTS)
    image_size = cfg.get("image_size") or default_size
    in_chans = int(params["in_chans"])
    splits, classes = {}, None
    for split in ("train", "val", "test"):
        if (root / split).is_dir():
            splits[split] = ImageFolderSplit(root / split, image_size, in_chans, cfg.get("on_corrupt", "error"), classes)
            classes = splits[split].classes
    if not splits:
        raise BenchbaseError(f"{root} has no train/, val/ or test/ folder; expected the ImageFolder layout")
    seed = int(params["split_seed"])
    if params["max_per_class"] and "train" in splits:
        train = splits["train"]
        per_class = len(train) / len(train.classes)
        splits["train"], _ = train.split_per_class(min(1.0, int(params["max_per_class"]) / per_class), seed)
    if params["holdout_fraction"] and "val" not in splits and "train" in splits:
        rest, held = splits["train"].split_per_class(1.0 - float(params["holdout_fraction"]), seed)
        splits["train"], splits["val"] = rest, held
    if params["minival_fraction"] and "train" in splits:
        fraction = float(params["minival_fraction"])
        if not 0 < fraction < 1:
            raise BenchbaseError(f"{name}: params.minival_fraction={fraction:g}; use a fraction between 0 and 1")
        splits["train"], splits["minival"] = splits["train"].split_per_class(1.0 - fraction, seed)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    mean, std = folder_normalisation(in_chans)
    return DataBundle(name=name, splits=splits, image_size=image_size, in_chans=in_chans,
                      num_classes=len(classes), description=f"ImageFolder at {root} ({sizes} images)",
                      image_mean=mean, image_std=std)

"""Image folders on disk (ImageNet-1K's layout), read lazily.

``root/<split>/<class>/<image>`` with splits such as ``train`` and ``val``. Images are decoded when
read, converted to RGB (or grayscale for ``in_chans=1``), resized to ``image_size`` and normalised
with ImageNet statistics. A missing path, a path that is a file, an empty class folder and an
undecodable image are one-line errors; ``on_corrupt=skip`` skips unreadable images instead, after
checking every file once, and counts them in ``skipped``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms import functional as TF

from benchbase.components import DataBundle, LabeledImages
from benchbase.errors import BenchbaseError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def read_image(path: Path, in_chans: int) -> Image.Image:
    """Decode ``path`` fully; a corrupt or truncated file is a one-line error naming it."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("L" if in_chans == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BenchbaseError(
            f"cannot read image {path} ({type(exc).__name__}: {exc}); replace or remove it, "
            "or pass data.<name>.on_corrupt=skip"
        ) from None


class ImageFolderSplit(LabeledImages):
    """One split folder: ``<split>/<class>/<image>``; classes sorted by name."""

    def __init__(self, folder: Path, image_size: int, in_chans: int = 3, on_corrupt: str = "error",
                 classes: list[str] | None = None):
        if on_corrupt not in ("error", "skip"):
            raise BenchbaseError(f"on_corrupt={on_corrupt!r}; use error or skip")
        self.image_size, self.in_chans = image_size, in_chans
        self.classes = classes or sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not self.classes:
            raise BenchbaseError(f"{folder} has no class folders; expected {folder}/<class>/<image>")
        self.samples: list[tuple[Path, int]] = []
        for index, name in enumerate(self.classes):
            files = sorted(p for p in (folder / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise BenchbaseError(f"class folder {folder / name} has no images; remove it or add images")
            self.samples.extend((p, index) for p in files)
        self.skipped: list[Path] = []
        if on_corrupt == "skip":
            good = []
            for path, label in self.samples:
                try:
                    read_image(path, in_chans)
                    good.append((path, label))
                except BenchbaseError:
                    self.skipped.append(path)
            self.samples = good
        self.targets = [label for _, label in self.samples]
        self.mean = torch.tensor(IMAGENET_MEAN[:in_chans] if in_chans == 3 else (0.5,) * in_chans).view(-1, 1, 1)
        self.std = torch.tensor(IMAGENET_STD[:in_chans] if in_chans == 3 else (0.5,) * in_chans).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        img = read_image(path, self.in_chans).resize((self.image_size, self.image_size), Image.BILINEAR)
        return (TF.pil_to_tensor(img).float() / 255.0 - self.mean) / self.std, label


def load_image_folder(cfg, name: str = "imagefolder") -> DataBundle:
    """Every split folder under ``cfg.root`` (``train``, ``val``, ``test``: those present)."""
    root = check_root(cfg.get("root"), name, "train/<class>/<image> (ImageFolder layout)")
    image_size = cfg.get("image_size") or 224
    in_chans = int((cfg.get("params") or {}).get("in_chans", 3))
    splits, classes = {}, None
    for split in ("train", "val", "test"):
        if (root / split).is_dir():
            splits[split] = ImageFolderSplit(root / split, image_size, in_chans, cfg.get("on_corrupt", "error"), classes)
            classes = splits[split].classes
    if not splits:
        raise BenchbaseError(f"{root} has no train/, val/ or test/ folder; expected the ImageFolder layout")
    return DataBundle(name=name, splits=splits, image_size=image_size, in_chans=in_chans,
                      num_classes=len(classes), description=f"ImageFolder at {root}")

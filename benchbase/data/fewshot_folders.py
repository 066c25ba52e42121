"""The usual few-shot benchmarks on disk: miniImageNet, tieredImageNet, CIFAR-FS and FC100.

Two layouts are read (``root`` is the data set's folder):

- class-split folders, ``<root>/{train,val,test}/<class>/<image>`` (CIFAR-FS and FC100 as
  DeepEMD's scripts lay them out, and most miniImageNet/tieredImageNet copies);
- Ravi & Larochelle's csv layout for miniImageNet: ``<root>/images/<file>`` with
  ``<root>/{train,val,test}.csv`` listing ``filename,label`` (a header line is allowed).

The classes of the three splits are disjoint. Splits returned:

- ``base``: every image of the train classes (distillation),
- ``base_train`` / ``base_test``: a seeded per-class split of ``base``, ``params.train_fraction``
  (default 0.75) / the rest (top-1 by linear probe or fine-tuning),
- ``val``: the validation classes (when present),
- ``novel``: the test classes (few-shot episodes).

Labels index each split's own ``classes`` (sorted class names). Expected class counts
(base/val/novel): miniImageNet 64/16/20, tieredImageNet 351/97/160, CIFAR-FS 64/16/20, FC100
60/20/20; other counts are a warning, not an error. Params: ``in_chans`` (3, or 1 for grayscale),
``train_fraction``, ``split_seed`` (default 0), and for SMKD's setting (all unset by default: every
split is then read as ``image_size``² squares):

- ``source_size``: the side of the square source images (SMKD's 480-px miniImageNet copies). The
  bundle's ``sources`` hold every split at that size, for methods that cut their own crops from
  them (:attr:`~benchbase.components.Method.reads_sources`); the other methods read the splits at
  ``image_size``, the models' input size.
- ``eval_resize`` and ``eval_crop`` (both or neither): every split but ``base`` (the one
  distillation reads) is read as SMKD's evaluation reads images: the square source resized to
  ``eval_resize`` and centre-cropped to ``eval_crop`` (:class:`~benchbase.data.folders.ResizeCrop`).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchbase.components import DataBundle, DatasetInfo
from benchbase.data.folders import (
    LazyImages,
    ResizeCrop,
    check_root,
    dataset_params,
    folder_normalisation,
    scan_class_folders,
)
from benchbase.errors import BenchbaseError

SPLIT_NAMES = {"base": "train", "val": "val", "novel": "test"}  # split -> folder / csv stem
LAYOUT = "train/<class>/<image>, val/ and test/ (class-split folders), or images/ with train.csv, val.csv, test.csv"
INFO = DatasetInfo(layout=LAYOUT, splits={
    "base": "every image of the train classes (distillation)",
    "base_train": "params.train_fraction of each train class's images (probe training)",
    "base_test": "the rest of them (top-1)",
    "val": "the validation classes, when present",
    "novel": "the test classes (few-shot episodes)",
})


@dataclass(frozen=True)
class FewShotDataset:
    """What differs between the few-shot benchmarks: name, default image size, expected class counts."""

    name: str
    image_size: int
    class_counts: tuple[int, int, int]  # base, val, novel
    source: str


MINIIMAGENET = FewShotDataset("miniimagenet", 84, (64, 16, 20), "miniImageNet (Ravi & Larochelle split)")
TIEREDIMAGENET = FewShotDataset("tieredimagenet", 84, (351, 97, 160), "tieredImageNet (Ren et al. 2018)")
CIFARFS = FewShotDataset("cifarfs", 32, (64, 16, 20), "CIFAR-FS (Bertinetto et al. 2019, CIFAR-100 classes)")
FC100 = FewShotDataset("fc100", 32, (60, 20, 20), "FC100 (Oreshkin et al. 2018, CIFAR-100 superclasses)")


def csv_samples(root: Path, listing: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(sorted class names, (image path, label) pairs) of a Ravi & Larochelle ``filename,label`` csv."""
    images = root / "images"
    with listing.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if rows and rows[0] == ["filename", "label"]:
        rows = rows[1:]
    bad = next((row for row in rows if len(row) != 2), None)
    if bad is not None:
        raise BenchbaseError(f"{listing} has the row {','.join(bad)!r}; expected 'filename,label'")
    if not rows:
        raise BenchbaseError(f"{listing} lists no images; expected 'filename,label' rows")
    present = {p.name for p in images.iterdir()} if images.is_dir() else set()
    missing = [name for name, _ in rows if name not in present]
    if missing:
        raise BenchbaseError(
            f"{len(missing)} image(s) listed in {listing} are not in {images} (first: {missing[0]}); "
            "put the images there or fix the csv"
        )
    classes = sorted({label for _, label in rows})
    index = {name: i for i, name in enumerate(classes)}
    return classes, [(images / name, index[label]) for name, label in sorted(rows)]


PARAMS = {"in_chans": 3, "train_fraction": 0.75, "split_seed": 0, "source_size": None, "eval_resize": None,
          "eval_crop": None}
"""``data.<name>.params`` of the few-shot folders and their defaults (see the module docstring)."""

DISTILLED = "base"
"""The split distillation reads: the one an evaluation view leaves as it is."""


def evaluation_view(params: Mapping[str, Any], name: str) -> ResizeCrop | None:
    """SMKD's evaluation view from ``params.eval_resize`` and ``params.eval_crop``: None when neither is
    set; one of them alone, or a crop larger than the resized side, is a one-line error."""
    resize, crop = params["eval_resize"], params["eval_crop"]
    if resize is None and crop is None:
        return None
    if resize is None or crop is None:
        raise BenchbaseError(f"data.{name}.params sets only one of eval_resize and eval_crop; set both (SMKD: 360 "
                             "and 320 on miniImageNet) or neither")
    if not 0 < int(crop) <= int(resize):
        raise BenchbaseError(f"data.{name}.params.eval_crop={crop} with eval_resize={resize}; the centre crop must be "
                             "positive and no larger than the resized short side")
    return ResizeCrop(int(resize), int(crop))


def source_side(params: Mapping[str, Any], name: str, image_size: int) -> int:
    """The side of the square source images: ``params.source_size``, or ``image_size`` when unset; a
    size below 1 is a one-line error."""
    if params["source_size"] is None:
        return image_size
    if int(params["source_size"]) < 1:
        raise BenchbaseError(f"data.{name}.params.source_size={params['source_size']}; give the side of the square "
                             "source images in pixels (SMKD: 480 on miniImageNet) or leave it unset")
    return int(params["source_size"])


def load_fewshot(cfg: Mapping[str, Any], dataset: FewShotDataset) -> DataBundle:
    """``dataset`` from ``cfg.root`` in either layout, with the splits of the module docstring."""
    root = check_root(cfg.get("root"), dataset.name, LAYOUT)
    params = dataset_params(cfg, dataset.name, PARAMS)
    image_size = cfg.get("image_size") or dataset.image_size
    source_size, view = source_side(params, dataset.name, image_size), evaluation_view(params, dataset.name)
    in_chans, on_corrupt = int(params["in_chans"]), cfg.get("on_corrupt", "error")
    use_csv = (root / "train.csv").is_file()
    splits = {}
    for split, stem in SPLIT_NAMES.items():
        if use_csv and (root / f"{stem}.csv").is_file():
            classes, samples = csv_samples(root, root / f"{stem}.csv")
        elif not use_csv and (root / stem).is_dir():
            classes, samples = scan_class_folders(root / stem)
        elif split == "val":
            continue
        else:
            raise BenchbaseError(f"{root} has no {stem}/ folder or {stem}.csv; expected {LAYOUT}")
        splits[split] = LazyImages(samples, classes, image_size, in_chans, on_corrupt)
    found = tuple(len(splits[split].classes) if split in splits else 0 for split in SPLIT_NAMES)
    if found != dataset.class_counts:
        warnings.warn(
            f"{dataset.name} at {root} has {'/'.join(map(str, found))} base/val/novel classes; the standard "
            f"split has {'/'.join(map(str, dataset.class_counts))}",
            stacklevel=3,
        )
    splits["base_train"], splits["base_test"] = splits["base"].split_per_class(
        float(params["train_fraction"]), int(params["split_seed"])
    )
    sizes = ", ".join(f"{name} {len(data.classes)} classes/{len(data)} images" for name, data in splits.items())
    sources = {name: split.prepared(source_size) for name, split in splits.items()} if params["source_size"] else None
    if view is not None:
        splits = {name: split if name == DISTILLED else split.prepared(source_size, view)
                  for name, split in splits.items()}
    mean, std = folder_normalisation(in_chans)
    return DataBundle(
        name=dataset.name, splits=splits, image_size=image_size, in_chans=in_chans, num_classes=found[0],
        image_mean=mean, image_std=std, sources=sources,
        description=f"{dataset.source} at {root} ({'csv' if use_csv else 'class-split folders'}): {sizes}; "
        f"{image_size}x{image_size}{preparation(params['source_size'], view)}",
    )


def preparation(source_size: int | None, view: ResizeCrop | None) -> str:
    """What the description adds for SMKD's sources and evaluation view (nothing without them)."""
    text = f"; sources {source_size}x{source_size}" if source_size else ""
    if view is not None:
        text += f"; splits but {DISTILLED} resized to {view.resize} and centre-cropped to {view.crop}"
    return text


def build_miniimagenet(cfg: Mapping[str, Any]) -> DataBundle:
    """miniImageNet, 84x84 by default (64/16/20 classes)."""
    return load_fewshot(cfg, MINIIMAGENET)


def build_tieredimagenet(cfg: Mapping[str, Any]) -> DataBundle:
    """tieredImageNet, 84x84 by default (351/97/160 classes)."""
    return load_fewshot(cfg, TIEREDIMAGENET)


def build_cifarfs(cfg: Mapping[str, Any]) -> DataBundle:
    """CIFAR-FS, 32x32 by default (64/16/20 classes)."""
    return load_fewshot(cfg, CIFARFS)


def build_fc100(cfg: Mapping[str, Any]) -> DataBundle:
    """FC100, 32x32 by default (60/20/20 classes)."""
    return load_fewshot(cfg, FC100)

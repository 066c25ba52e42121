"""Omniglot (Lake et al., Science 2015): 1,623 handwritten characters of 50 alphabets, 20 drawers each.

``root`` holds one or more of the release's sources, each a folder or the ``.zip`` file itself
(read without extracting): ``images_background``, ``images_evaluation``,
``images_background_small1``, ``images_background_small2``, laid out as
``<source>/<Alphabet>/<characterNN>/<image>.png``. A folder is preferred to a zip of the same name.
``params.sources`` (a list of names) restricts which are read; by default every one present is.

An alphabet may appear in several sources (Greek and Latin are in both small splits, with identical
files): images are deduplicated by ``<Alphabet>/<characterNN>/<file>``, the first source in name
order winning. The two small splits together hold 8 alphabets, 242 characters and 4,840 images.

Every character is a class named ``<Alphabet>/<characterNN>``. Whole alphabets are split between
base and novel classes, so novel characters come from alphabets never seen in distillation:
``params.base_alphabets`` (and optionally ``novel_alphabets``, default: the rest) name them, or else
``round(base_fraction × alphabets)`` alphabets (``base_fraction`` default 0.6, at least one
alphabet each side) are drawn with ``split_seed`` (default 0). Splits:

- ``base``: every image of the base characters (distillation),
- ``base_train`` / ``base_test``: a seeded per-character split of ``base``, ``train_fraction``
  (default 0.75) / the rest (top-1),
- ``novel``: every image of the novel characters (few-shot episodes).

``params.rotations`` (1, the default: none; or 4) makes every base character four classes, one per
quarter turn: ``rotations: 4`` adds each image turned by 90, 180 and 270 degrees as a new class
(``<Alphabet>/<characterNN>/rot90`` ...), the augmentation of Vinyals et al. (2016, matching
networks) and Snell et al. (2017, prototypical networks) on Omniglot's background set. It applies to
``base``, ``base_train`` and ``base_test`` (split per character first, so a drawer's image and its
turns fall on the same side); ``novel`` is never turned (its few-shot classes are the characters as
drawn). Each turn is an exact ``torch.rot90`` of the resized image (counter-clockwise as displayed).

Labels index each split's own ``classes``; each split's ``class_groups`` names every character's
alphabet (few-shot episodes within one alphabet: ``within_group``). The 105x105 binary images are read as grayscale,
resized bilinearly to ``image_size``² (default 28) and normalised with mean 0.5 and std 0.5;
``params.in_chans=3`` repeats the channel (and normalises with ImageNet statistics).
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from benchbase.components import DataBundle, DatasetInfo, LabeledImages
from benchbase.data.folders import (
    IMAGE_SUFFIXES, ImageSource, LazyImages, ZipMember, check_root, dataset_params, folder_normalisation,
)
from benchbase.errors import BenchbaseError

SOURCE_PREFIX = "images_"
LAYOUT = "images_background[_smallN]/ or images_evaluation/ (folders or .zip files) of <Alphabet>/<characterNN>/*.png"
DEFAULTS = {
    "in_chans": 1, "sources": None, "base_fraction": 0.6, "base_alphabets": None, "novel_alphabets": None,
    "train_fraction": 0.75, "split_seed": 0, "rotations": 1,
}
INFO = DatasetInfo(layout=LAYOUT, splits={
    "base": "every image of the base alphabets' characters (distillation); params.rotations: each quarter turn a class",
    "base_train": "params.train_fraction of each base character's images (probe training)",
    "base_test": "the rest of them (top-1)",
    "novel": "every image of the novel alphabets' characters (few-shot episodes)",
})

Listing = tuple[dict[str, ImageSource], set[str]]  # {"Alphabet/character/file": image}, {"Alphabet/character"}


def _is_image(parts: Sequence[str]) -> bool:
    """Whether the path ``parts`` name an image (not a hidden file or a macOS ``__MACOSX`` copy)."""
    return PurePosixPath(parts[-1]).suffix.lower() in IMAGE_SUFFIXES and not parts[-1].startswith(".") \
        and "__MACOSX" not in parts


def _folder_listing(source: Path) -> Listing:
    """Images and character folders of an extracted source."""
    images = {"/".join(p.parts[-3:]): p for p in source.glob("*/*/*") if _is_image(p.parts)}
    characters = {"/".join(p.parts[-2:]) for p in source.glob("*/*") if p.is_dir()}
    return images, characters


def _zip_listing(source: Path) -> Listing:
    """Images and character folders of a source zip (its top folder, if any, is ignored)."""
    try:
        with zipfile.ZipFile(source) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise BenchbaseError(f"cannot read zip archive {source} ({exc}); download it again or extract it") from None
    images: dict[str, ImageSource] = {}
    for name in names:
        parts = PurePosixPath(name).parts
        if not name.endswith("/") and len(parts) >= 3 and _is_image(parts):
            images["/".join(parts[-3:])] = ZipMember(source, name)
    alphabets = {key.split("/")[0] for key in images}
    folders = (PurePosixPath(name).parts for name in names if name.endswith("/"))
    characters = {"/".join(parts[-2:]) for parts in folders if len(parts) >= 2 and parts[-2] in alphabets}
    return images, characters


def _sources(root: Path, names: Sequence[str] | None) -> list[Path]:
    """The source folders/zips under ``root`` (a folder wins over a zip of the same name), by name."""
    found: dict[str, Path] = {}
    for path in sorted(root.glob(SOURCE_PREFIX + "*"), key=lambda p: p.suffix == ".zip"):
        if path.is_dir() or path.suffix == ".zip":
            found.setdefault(path.name.removesuffix(".zip"), path)
    if names is not None:
        missing = [name for name in names if name not in found]
        if missing:
            raise BenchbaseError(
                f"data.omniglot.params.sources names {', '.join(missing)}, not in {root}; "
                f"present: {', '.join(sorted(found)) or 'none'}"
            )
        found = {name: found[name] for name in names}
    if not found:
        raise BenchbaseError(f"{root} has no Omniglot source; expected {LAYOUT}")
    return [found[name] for name in sorted(found)]


def omniglot_characters(root: Path, names: Sequence[str] | None = None) -> dict[str, list[ImageSource]]:
    """Every character (``Alphabet/characterNN``, sorted) with its images, deduplicated across sources."""
    images: dict[str, ImageSource] = {}
    characters: dict[str, Path] = {}
    for source in _sources(root, names):
        found, folders = (_zip_listing if source.suffix == ".zip" else _folder_listing)(source)
        for key, image in found.items():
            images.setdefault(key, image)
        for character in folders:
            characters.setdefault(character, source)
    grouped: dict[str, list[ImageSource]] = {character: [] for character in characters}
    for key in sorted(images):
        grouped.setdefault(key.rsplit("/", 1)[0], []).append(images[key])
    empty = sorted(character for character, files in grouped.items() if not files)
    if empty:
        raise BenchbaseError(
            f"character folder {characters[empty[0]]}/{empty[0]} has no images; remove it or add its images"
        )
    if not grouped:
        raise BenchbaseError(f"the Omniglot sources under {root} hold no images; expected {LAYOUT}")
    return dict(sorted(grouped.items()))


class RotatedImages(LabeledImages):
    """Every image of ``images`` at each of ``rotations`` quarter turns, each turn of a class its own
    class: item ``i * rotations + r`` is item ``i`` turned ``r`` times by ``torch.rot90`` (label
    ``label * rotations + r``, class ``<class>/rot<90 r>``; turn 0 keeps its name)."""

    def __init__(self, images: LabeledImages, rotations: int):
        self.images, self.rotations = images, rotations
        self.classes = [name if r == 0 else f"{name}/rot{90 * r}" for name in images.classes for r in range(rotations)]
        groups = images.class_groups
        self.class_groups = None if groups is None else [group for group in groups for _ in range(rotations)]
        self.targets = [label * rotations + r for label in images.targets for r in range(rotations)]

    def __len__(self) -> int:
        return len(self.images) * self.rotations

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.images[index // self.rotations]
        turn = index % self.rotations
        return torch.rot90(image, turn, dims=(-2, -1)), label * self.rotations + turn


def split_alphabets(alphabets: Sequence[str], params: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(base, novel) alphabets: the named ones (either list defaults to the other's complement), or a
    seeded draw of ``base_fraction`` of them as base and the rest as novel."""
    base, novel = params["base_alphabets"], params["novel_alphabets"]
    if base is None and novel is None:
        count = min(max(round(float(params["base_fraction"]) * len(alphabets)), 1), len(alphabets) - 1)
        order = torch.randperm(len(alphabets), generator=torch.Generator().manual_seed(int(params["split_seed"])))
        base = [alphabets[i] for i in order[:count].tolist()]
    base = [a for a in alphabets if a not in novel] if base is None else list(base)
    novel = [a for a in alphabets if a not in base] if novel is None else list(novel)
    unknown = sorted((set(base) | set(novel)) - set(alphabets))
    if unknown:
        raise BenchbaseError(f"unknown Omniglot alphabet(s) {', '.join(unknown)}; present: {', '.join(alphabets)}")
    if set(base) & set(novel) or not base or not novel:
        raise BenchbaseError("data.omniglot.params base_alphabets and novel_alphabets must be disjoint and non-empty")
    return sorted(base), sorted(novel)


def build_omniglot(cfg: Mapping[str, Any]) -> DataBundle:
    """Omniglot with splits ``base``, ``base_train``, ``base_test`` and ``novel`` (module docstring)."""
    root = check_root(cfg.get("root"), "omniglot", LAYOUT)
    params = dataset_params(cfg, "omniglot", DEFAULTS)
    image_size = cfg.get("image_size") or 28
    in_chans, on_corrupt = int(params["in_chans"]), cfg.get("on_corrupt", "error")
    characters = omniglot_characters(root, params["sources"])
    alphabets = sorted({character.split("/")[0] for character in characters})
    if len(alphabets) < 2:
        raise BenchbaseError(f"the Omniglot sources under {root} hold one alphabet; base and novel need two or more")
    base_alphabets, novel_alphabets = split_alphabets(alphabets, params)
    splits = {}
    for split, chosen in (("base", base_alphabets), ("novel", novel_alphabets)):
        classes = [character for character in characters if character.split("/")[0] in chosen]
        samples = [(image, label) for label, character in enumerate(classes) for image in characters[character]]
        alphabet_of = [character.split("/")[0] for character in classes]
        splits[split] = LazyImages(samples, classes, image_size, in_chans, on_corrupt, class_groups=alphabet_of)
    splits["base_train"], splits["base_test"] = splits["base"].split_per_class(
        float(params["train_fraction"]), int(params["split_seed"])
    )
    rotations = int(params["rotations"])
    if rotations not in (1, 4):
        raise BenchbaseError(f"data.omniglot.params.rotations={rotations}; use 1 (none) or 4 (every quarter turn)")
    if rotations > 1:
        for split in ("base", "base_train", "base_test"):
            splits[split] = RotatedImages(splits[split], rotations)
    mean, std = folder_normalisation(in_chans)
    return DataBundle(
        name="omniglot", splits=splits, image_size=image_size, in_chans=in_chans,
        num_classes=len(splits["base"].classes), image_mean=mean, image_std=std,
        description=f"Omniglot at {root}: {len(characters)} characters of {len(alphabets)} alphabets; base "
        f"{', '.join(base_alphabets)} ({len(splits['base'].classes)} classes"
        f"{f' = characters x {rotations} quarter turns' if rotations > 1 else ''}, split "
        f"{params['train_fraction']:.0%} per character for top-1), novel {', '.join(novel_alphabets)} "
        f"({len(splits['novel'].classes)} characters); {image_size}x{image_size}",
    )

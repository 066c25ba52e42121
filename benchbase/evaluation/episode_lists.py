"""Published few-shot episode lists: fixed test episodes read from a CSV or JSON file.

Each episode lists its support and query images with their way labels (any name, local to the
episode). An image is a path (relative paths start at ``image_root``, default the file's folder)
or a whole number, an index into the evaluator's split; one file uses one kind. Both formats:

CSV, one row per image, with the header ``episode,set,way,image``::

    episode,set,way,image
    1,support,cat,cat/001.png
    1,support,dog,dog/004.png
    1,query,cat,cat/017.png
    1,query,dog,dog/020.png

JSON, a list of episodes (or ``{"episodes": [...]}``), each mapping way labels to images::

    [{"support": {"cat": ["cat/001.png"], "dog": ["dog/004.png"]},
      "query": {"cat": ["cat/017.png"], "dog": ["dog/020.png"]}}]

Every episode needs two or more ways, the same number of support images (shots) for every way, at
least one query image, and no query way without support images; an image is never both a support
and a query image of one episode. Episodes may differ in ways and shots: each (ways, shots) shape
is scored as its own metric.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchbase.errors import BenchbaseError

Image = str | int
"""A path (str) or an index into the split (int)."""

CSV_COLUMNS = ("episode", "set", "way", "image")
SETS = ("support", "query")


@dataclass
class _Episode:
    name: str
    images: dict[str, dict[str, list[Image]]] = field(default_factory=lambda: {s: {} for s in SETS})


@dataclass
class EpisodeList:
    """The episodes of one file as index tensors, one pair per (ways, shots) shape.

    ``shapes[(N, K)]`` is ([E, N, K] support, [E, N, Q] query) long indices, -1 padding the query
    lists of ways with fewer than Q queries; way j of an episode is its j-th way label in file
    order. Indices point into ``images`` (the files, in first-use order) when the file lists paths,
    or into the evaluator's split when ``images`` is None.
    """

    path: Path
    digest: str  # sha256 of the file's bytes: two lists with the same name never share a protocol
    shapes: dict[tuple[int, int], tuple[Tensor, Tensor]]
    images: list[Path] | None
    largest_index: tuple[int, str] = (-1, "")  # the largest split index and the episode that uses it

    def check_indices(self, size: int, where: str) -> None:
        """Raise :class:`BenchbaseError` if an index lies outside a split of ``size`` images (``where`` names it)."""
        index, episode = self.largest_index
        if self.images is None and index >= size:
            raise BenchbaseError(
                f"episodes file {self.path}, {episode}: image index {index} is outside {where} ({size} images); "
                "use indices into that split or image paths"
            )


def _fail(path: Path, problem: str) -> BenchbaseError:
    return BenchbaseError(f"episodes file {path}: {problem}")


def _csv_episodes(path: Path, text: str) -> list[_Episode]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise _fail(path, f"no column {', '.join(missing)}; the header must be {','.join(CSV_COLUMNS)}")
    episodes: dict[str, _Episode] = {}
    for line, row in enumerate(reader, 2):
        kind = (row["set"] or "").strip().lower()
        if kind not in SETS:
            raise _fail(path, f"line {line}: set {row['set']!r} is not support or query")
        name, image = row["episode"].strip(), (row["image"] or "").strip()
        if not image:
            raise _fail(path, f"line {line}: no image")
        episode = episodes.setdefault(name, _Episode(f"episode {name}"))
        episode.images[kind].setdefault(row["way"].strip(), []).append(int(image) if image.isdigit() else image)
    return list(episodes.values())


def _json_episodes(path: Path, text: str) -> list[_Episode]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(path, f"not valid JSON ({exc})") from None
    if isinstance(data, dict):
        data = data.get("episodes")
    if not isinstance(data, list):
        raise _fail(path, 'expected a list of episodes or {"episodes": [...]}')
    episodes = []
    for number, raw in enumerate(data, 1):
        episode = _Episode(f"episode {number}")
        for kind in SETS:
            ways = raw.get(kind, {}) if isinstance(raw, dict) else None
            if not isinstance(ways, dict) or not all(isinstance(v, list) for v in ways.values()):
                raise _fail(path, f"{episode.name}: {kind!r} must map way labels to lists of images")
            episode.images[kind] = {str(way): list(images) for way, images in ways.items()}
        episodes.append(episode)
    return episodes


def _check(path: Path, episode: _Episode) -> tuple[list[str], int]:
    """The episode's way labels (support order) and shots; raises for a malformed episode."""
    support, query = episode.images["support"], episode.images["query"]
    if not any(query.values()):
        raise _fail(path, f"{episode.name} has no query image; every episode needs at least one")
    ways = [way for way, images in support.items() if images]
    if len(ways) < 2:
        raise _fail(path, f"{episode.name} has {len(ways)} way(s) with support images; an episode needs 2 or more")
    shots = {way: len(support[way]) for way in ways}
    if len(set(shots.values())) > 1:
        counts = ", ".join(f"{way}: {count}" for way, count in shots.items())
        raise _fail(path, f"{episode.name} has unequal shots per way ({counts}); give every way the same number")
    orphans = [way for way, images in query.items() if images and way not in shots]
    if orphans:
        raise _fail(path, f"{episode.name}: query way {orphans[0]!r} has no support images")
    shared = {str(i) for images in support.values() for i in images} & {str(i) for v in query.values() for i in v}
    if shared:
        raise _fail(path, f"{episode.name}: image {sorted(shared)[0]} is both a support and a query image")
    return ways, len(support[ways[0]])


class _Resolver:
    """Indices of an episode list's images: paths become positions in ``files``, indices stay."""

    def __init__(self, path: Path, root: Path):
        self.path, self.root = path, root
        self.kind: type | None = None
        self.files: dict[Path, int] = {}
        self.largest: tuple[int, str] = (-1, "")

    def __call__(self, image: Any, episode: str) -> int:
        kind = int if isinstance(image, int) and not isinstance(image, bool) else str if isinstance(image, str) else None
        if kind is None:
            raise _fail(self.path, f"{episode}: image {image!r} is neither a path nor an index")
        if self.kind not in (None, kind):
            raise _fail(self.path, f"{episode}: mixes image paths and split indices; use one kind per file")
        self.kind = kind
        if kind is int:
            if image < 0:
                raise _fail(self.path, f"{episode}: image index {image} is negative")
            self.largest = max(self.largest, (image, episode), key=lambda pair: pair[0])
            return image
        file = (self.root / image).resolve()
        if file not in self.files:
            if not file.is_file():
                raise _fail(self.path, f"{episode}: image {file} does not exist")
            self.files[file] = len(self.files)
        return self.files[file]


def read_episode_list(path: str | Path, image_root: str | Path | None = None) -> EpisodeList:
    """Read and check an episode list (module docstring); every problem is a one-line error naming it.

    Args:
        path: a ``.csv`` or ``.json`` file.
        image_root: the folder relative image paths start at (default: the file's folder).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8-sig")
    except OSError as exc:
        raise BenchbaseError(f"cannot read episodes file {path} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise _fail(path, "not UTF-8 text") from None
    if path.suffix.lower() not in (".csv", ".json"):
        raise _fail(path, "unknown format; use a .csv or .json file (see the plugin guide)")
    episodes = (_csv_episodes if path.suffix.lower() == ".csv" else _json_episodes)(path, text)
    if not episodes:
        raise _fail(path, "holds no episodes")
    resolve = _Resolver(path, Path(image_root) if image_root is not None else path.parent)
    grouped: dict[tuple[int, int], list[tuple[list[list[int]], list[list[int]]]]] = defaultdict(list)
    for episode in episodes:
        ways, shots = _check(path, episode)
        support = [[resolve(i, episode.name) for i in episode.images["support"][way]] for way in ways]
        query = [[resolve(i, episode.name) for i in episode.images["query"].get(way, [])] for way in ways]
        grouped[(len(ways), shots)].append((support, query))
    shapes = {}
    for shape, items in grouped.items():
        width = max(len(q) for _, queries in items for q in queries)
        query = torch.full((len(items), shape[0], width), -1, dtype=torch.long)
        for e, (_, queries) in enumerate(items):
            for way, indices in enumerate(queries):
                query[e, way, : len(indices)] = torch.tensor(indices, dtype=torch.long)
        shapes[shape] = (torch.tensor([support for support, _ in items], dtype=torch.long), query)
    files = list(resolve.files) if resolve.kind is str else None
    return EpisodeList(path, hashlib.sha256(raw).hexdigest(), shapes, files, resolve.largest)

"""Procedural glyphs: many random characters drawn with nuisance variation (generated, no download).

Each class is a random character of 2-4 quadratic Bezier strokes (control points in the unit
square; a later stroke starts on an earlier one half of the time, as pen strokes do), drawn from
a generator seeded with ``class_seed``. Each image is one instance of a class: its control points
jittered, then a random affine map (rotation, scale, shear, translation) about the centre, and a
random stroke width; it is rendered anti-aliased from a distance field (the distance of every
pixel centre to the strokes' polylines), ink in [0, 1].

So classes are many and instances vary in ways raw pixels do not absorb (a pixel's ink moves with
the pen), while a network that learned what strokes make a class generalises to new classes.

Splits of the classification bundle (:func:`load_glyphs`; classes and instances fixed by
``class_seed`` and ``split_seed``, independent of the run's seed):

- ``base_train``: ``per_class_train`` instances of each of the ``base`` classes (distillation,
  probe training),
- ``base_val`` / ``base_test``: ``per_class_test`` further instances of each base class each
  (choices / top-1),
- ``novel_val`` / ``novel``: ``per_class_novel`` instances of each of ``novel_val`` / ``novel``
  further classes, never seen in distillation (choices / few-shot episodes).

The segmentation bundle (:func:`load_glyph_scenes`) draws its images from the first ``classes``
base classes, one glyph per image, and labels a pixel with the glyph's class + 1 where its ink, or
that of a pixel within ``halo`` pixels (the square neighbourhood), exceeds :data:`INK_THRESHOLD`,
else background (0).

Images are standardised with the statistics of ``base_train`` (of the scenes' train split for the
segmentation bundle). Shapes: n = images, K = strokes per glyph (padded to :data:`MAX_STROKES`),
S = image size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from benchbase.components import DataBundle, DatasetInfo
from benchbase.data.scenes import TensorSegmentationImages
from benchbase.data.tensors import TensorImages, normalisation, normalise
from benchbase.errors import BenchbaseError

MAX_STROKES = 4
"""Most strokes of a glyph (each glyph has 2 to this many)."""

CURVE_POINTS = 9
"""Points at which each Bezier stroke is evaluated; the strokes are drawn as the polylines through them."""

INK_THRESHOLD = 0.5
"""Ink above which a segmentation pixel carries its glyph's label."""

_CHUNK = 512  # images rendered per step (bounds the [chunk, segments, S*S] distance tensor)

INFO = DatasetInfo(splits={
    "base_train": "instances of the base classes (distillation, probe training)",
    "base_val": "further instances of the base classes (validation: recipe choices)",
    "base_test": "further instances of the base classes (top-1)",
    "novel_val": "instances of classes never distilled, disjoint from novel (validation: recipe choices)",
    "novel": "instances of further classes never distilled (few-shot episodes)",
})

SCENES_INFO = DatasetInfo(kind="segmentation", splits={
    "train": "one glyph of the first base classes per image, per-pixel labels (probe training)",
    "val": "further such images (validation: recipe choices)",
    "test": "further such images (mIoU)",
})


def glyph_classes(count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random characters.

    Returns:
        ([count, K, 3, 2] control points (start, control, end) of each stroke in the unit square,
        [count, K] bool: which strokes a glyph has, 2 to K of them).
    """
    points = torch.empty(count, MAX_STROKES, 3, 2)
    used = torch.zeros(count, MAX_STROKES, dtype=torch.bool)
    for c in range(count):  # a fixed number of draws per glyph: glyph c is the same whatever the count
        points[c] = 0.15 + 0.7 * torch.rand(MAX_STROKES, 3, 2, generator=generator)
        used[c, : int(torch.randint(2, MAX_STROKES + 1, (1,), generator=generator))] = True
        attach = torch.rand(MAX_STROKES, generator=generator) < 0.5
        source = torch.randint(0, MAX_STROKES, (MAX_STROKES,), generator=generator)
        end = torch.randint(0, 2, (MAX_STROKES,), generator=generator) * 2
        for k in range(1, MAX_STROKES):  # half of the later strokes start where an earlier one starts or ends
            if attach[k]:
                points[c, k, 0] = points[c, int(source[k]) % k, int(end[k])]
    return points, used


def _curves(points: Tensor) -> Tensor:
    """[..., 3, 2] quadratic Bezier control points -> [..., CURVE_POINTS, 2] points along each curve."""
    t = torch.linspace(0, 1, CURVE_POINTS).view(-1, 1)
    p0, p1, p2 = points[..., 0:1, :], points[..., 1:2, :], points[..., 2:3, :]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def render(points: Tensor, used: Tensor, width: Tensor, size: int) -> Tensor:
    """Anti-aliased ink of strokes.

    Args:
        points: [n, K, 3, 2] control points in unit coordinates (x right, y down; the image spans [0, 1]).
        used: [n, K] bool, the strokes to draw.
        width: [n] stroke half-width in unit coordinates.

    Returns:
        [n, S, S] ink in [0, 1]: 1 within ``width`` of a stroke, falling linearly to 0 over one pixel.
    """
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    px = centres.repeat(size)  # [P] x of each pixel centre, row-major
    py = centres.repeat_interleave(size)
    out = []
    for start in range(0, points.shape[0], _CHUNK):
        chunk = slice(start, start + _CHUNK)
        curve = _curves(points[chunk])  # [c, K, T, 2]
        a = curve[:, :, :-1].flatten(1, 2)  # [c, G, 2] segment starts (G = K * (T - 1) segments)
        e = curve[:, :, 1:].flatten(1, 2) - a  # [c, G, 2] segment vectors
        dx = px - a[..., 0:1]  # [c, G, P] pixel minus segment start
        dy = py - a[..., 1:2]
        ex, ey = e[..., 0:1], e[..., 1:2]
        t = ((dx * ex + dy * ey) / (ex * ex + ey * ey).clamp_min(1e-8)).clamp_(0, 1)
        dist2 = (dx - t * ex).square_() + (dy - t * ey).square_()  # squared distance to the nearest point
        drawn = used[chunk].repeat_interleave(CURVE_POINTS - 1, dim=1).unsqueeze(-1)
        dist = dist2.masked_fill_(~drawn, math.inf).amin(dim=1).sqrt_()  # [c, P]
        ink = ((width[chunk, None] - dist) * size + 0.5).clamp_(0, 1)
        out.append(ink.view(-1, size, size))
    return torch.cat(out)


def draw_instances(
    points: Tensor,
    used: Tensor,
    labels: Tensor,
    size: int,
    generator: torch.Generator,
    jitter: float = 0.04,
    rotation: float = 30.0,
    scale: tuple[float, float] = (0.8, 1.1),
    shear: float = 0.2,
    shift: float = 0.15,
    width: tuple[float, float] = (0.035, 0.06),
) -> Tensor:
    """Render one instance of class ``labels[i]`` per entry.

    Args:
        points, used: the classes (:func:`glyph_classes`).
        labels: [n] long class indices.
        jitter: std of the per-instance offset of every control point (unit coordinates).
        rotation: largest rotation, degrees (uniform in ±rotation).
        scale: range of the isotropic scale; shear: largest shear; shift: largest translation.
        width: range of the stroke half-width (unit coordinates).

    Returns:
        [n, S, S] ink in [0, 1].
    """
    n = labels.numel()
    pts = points[labels] + jitter * torch.randn(n, MAX_STROKES, 3, 2, generator=generator)

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-rotation, rotation) * math.pi / 180
    zoom = uniform(*scale)
    skew = uniform(-shear, shear)
    offset = torch.stack([uniform(-shift, shift), uniform(-shift, shift)], dim=-1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [n, 2, 2]
    shear_m = torch.zeros(n, 2, 2)
    shear_m[:, 0, 0] = shear_m[:, 1, 1] = 1.0
    shear_m[:, 0, 1] = skew
    matrix = zoom.view(n, 1, 1) * rot @ shear_m
    centred = pts - 0.5
    moved = torch.einsum("nij,nksj->nksi", matrix, centred) + 0.5 + offset.view(n, 1, 1, 2)
    return render(moved, used[labels], uniform(*width), size)


def _instances(points: Tensor, used: Tensor, classes: Tensor, per_class: int, size: int,
               generator: torch.Generator, nuisance: dict) -> tuple[Tensor, Tensor]:
    """[len(classes) * per_class, 1, S, S] ink and their [n] class indices (into ``points``)."""
    labels = classes.repeat_interleave(per_class)
    return draw_instances(points, used, labels, size, generator, **nuisance).unsqueeze(1), labels


def load_glyphs(
    image_size: int = 16,
    base: int = 64,
    novel_val: int = 64,
    novel: int = 128,
    per_class_train: int = 60,
    per_class_test: int = 10,
    per_class_novel: int = 20,
    class_seed: int = 0,
    split_seed: int = 0,
    nuisance: dict | None = None,
) -> DataBundle:
    """The glyphs as a :class:`DataBundle` with splits base_train, base_val, base_test, novel_val, novel.

    Base classes are labelled 0..base-1; novel_val and novel classes continue the numbering (class
    ``c`` is glyph ``c`` of the ``class_seed`` generator). ``nuisance`` overrides the instance
    variation of :func:`draw_instances`.
    """
    if min(base, novel_val, novel) < 1 or min(per_class_train, per_class_test, per_class_novel) < 1:
        raise BenchbaseError("glyphs need at least one class and one instance per class in every split")
    total = base + novel_val + novel
    points, used = glyph_classes(total, torch.Generator().manual_seed(class_seed))
    generator = torch.Generator().manual_seed(1000 + split_seed)
    nuisance = dict(nuisance or {})
    base_classes = torch.arange(base)
    val_classes = torch.arange(base, base + novel_val)
    novel_classes = torch.arange(base + novel_val, total)
    raw = {
        "base_train": _instances(points, used, base_classes, per_class_train, image_size, generator, nuisance),
        "base_val": _instances(points, used, base_classes, per_class_test, image_size, generator, nuisance),
        "base_test": _instances(points, used, base_classes, per_class_test, image_size, generator, nuisance),
        "novel_val": _instances(points, used, val_classes, per_class_novel, image_size, generator, nuisance),
        "novel": _instances(points, used, novel_classes, per_class_novel, image_size, generator, nuisance),
    }
    reference = raw["base_train"][0]
    names = [f"glyph{c}" for c in range(total)]
    splits = {name: TensorImages(normalise(images, reference), labels, names) for name, (images, labels) in raw.items()}
    mean, std = normalisation(reference)
    return DataBundle(
        name="glyphs",
        splits=splits,
        image_size=image_size,
        in_chans=1,
        num_classes=base,
        image_mean=mean,
        image_std=std,
        description=(
            f"procedural glyphs ({image_size}x{image_size}, 2-{MAX_STROKES} random Bezier strokes per class, per-instance "
            f"jitter, affine and stroke width); {base} base classes x {per_class_train} train / {per_class_test} val / "
            f"{per_class_test} test instances, {novel_val} novel_val and {novel} novel classes x {per_class_novel}; "
            f"class_seed {class_seed}, split_seed {split_seed}"
        ),
    )


def load_glyph_scenes(
    image_size: int = 16,
    classes: int = 10,
    n_train: int = 600,
    n_val: int = 500,
    n_test: int = 500,
    class_seed: int = 0,
    split_seed: int = 0,
    nuisance: dict | None = None,
    halo: int = 1,
) -> DataBundle:
    """Segmentation of single glyphs: splits train, val and test of [n, 1, S, S] standardised images
    and [n, S, S] long label maps (0 background, c + 1 for glyph class c < ``classes``, the first
    base classes of :func:`load_glyphs` with the same ``class_seed``), every pixel labelled: the
    glyph's class on its strokes and within ``halo`` pixels of them (so that the glyphs are not a
    small minority of the pixels; 0 labels the ink alone)."""
    if classes < 1 or min(n_train, n_val, n_test) < 1 or halo < 0:
        raise BenchbaseError("glyph scenes need classes >= 1, n_train, n_val, n_test >= 1 and halo >= 0")
    points, used = glyph_classes(classes, torch.Generator().manual_seed(class_seed))
    generator = torch.Generator().manual_seed(2000 + split_seed)
    raw = {}
    for name, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = torch.randint(classes, (n,), generator=generator)
        ink = draw_instances(points, used, labels, image_size, generator, **dict(nuisance or {}))
        near = F.max_pool2d(ink.unsqueeze(1), 2 * halo + 1, stride=1, padding=halo).squeeze(1) if halo else ink
        maps = torch.where(near > INK_THRESHOLD, labels.view(-1, 1, 1) + 1, 0)
        raw[name] = (ink.unsqueeze(1), maps)
    reference = raw["train"][0]
    names = ["background"] + [f"glyph{c}" for c in range(classes)]
    splits = {name: TensorSegmentationImages(normalise(ink, reference), maps, names) for name, (ink, maps) in raw.items()}
    mean, std = normalisation(reference)
    return DataBundle(
        name="glyph_scenes",
        splits=splits,
        image_size=image_size,
        in_chans=1,
        num_classes=classes + 1,
        image_mean=mean,
        image_std=std,
        description=(
            f"single procedural glyphs ({image_size}x{image_size}) of the first {classes} base classes, label = class + 1 "
            f"where the ink within {halo} px > {INK_THRESHOLD}, background 0; train {n_train} / val {n_val} / test {n_test} images, "
            f"class_seed {class_seed}, split_seed {split_seed}"
        ),
        ignore_index=None,
    )


def build_glyphs(cfg) -> DataBundle:
    """The registered ``glyphs`` dataset: ``data.glyphs.image_size`` and ``params`` (of :func:`load_glyphs`)."""
    return load_glyphs(image_size=cfg.get("image_size") or 16, **dict(cfg.get("params") or {}))


def build_glyph_scenes(cfg) -> DataBundle:
    """The registered ``glyph_scenes`` dataset: ``data.glyph_scenes.image_size`` and ``params``
    (of :func:`load_glyph_scenes`)."""
    return load_glyph_scenes(image_size=cfg.get("image_size") or 16, **dict(cfg.get("params") or {}))

"""Paired frame + event segmentation data: SIMULATED events of the digit scenes and CamVid, and
real recordings in a common ``.npz`` format.

Every item is ``(x, label)``: ``x`` is [F + E, S, S] float, the frame's F channels stacked on the
E channels of the events' representation, and ``label`` is [S, S] long, so the harness's
DataLoader of (image, label) pairs works unchanged. A distillation loss gives the teacher the frame
and the student the events of the same scene with :func:`split_channels` (each dataset has
``frame_channels`` = F, ``event_channels`` = E and a ``split_channels`` method).

The event representation (``params.representation``) is ``voxel`` (E = ``params.bins``, a
normalised voxel grid, :func:`~benchbase.events.voxel_grid`) or ``count`` (E = 2, positive and
negative counts, :func:`~benchbase.events.event_count_frame`).

Simulated data (``digit_scene_events``, ``camvid_events``): each item's frame moves by a random
small camera motion (:class:`~benchbase.events.Motion`, drawn per item from a deterministic seed
of (``seed``, split, index)); the SIMULATOR (:func:`~benchbase.events.simulate_events`) turns the
motion into events over one second, and the frame and the label map are warped to the final pose
(bilinear and nearest respectively), so frame, events and labels show the same scene. Events are
simulated on access; ``params.cache`` keeps the finished items in memory (per process).
Simulation params (defaults in :data:`SIMULATION_DEFAULTS`): ``bins``, ``representation``,
``contrast_threshold``, ``steps``, ``max_translation`` (pixels), ``max_rotation`` (degrees),
``max_scale`` (relative), ``noise_rate`` (events per pixel per second), ``refractory`` (seconds),
the pixel model's ``linlog_threshold`` (DN of 255; 0 = pure log), ``threshold_sigma``,
``leak_rate`` and ``shot_noise_rate`` (Hz per pixel), defaults v2e's (see
:mod:`benchbase.events.simulator`; all four 0 for an ideal sensor), and ``cache``. The sensor's
fixed pattern (per-pixel thresholds and leak rates) is drawn from ``seed``: one camera for the
whole dataset.

Recordings (``event_recordings``): ``<root>/{train,test}/*.npz``, one file per sample with 1-D
arrays ``x``, ``y``, ``t``, ``p`` (polarity > 0 positive, 0 or -1 negative; any time unit), a
``frame`` (uint8 [H, W] grayscale or [H, W, 3] RGB) and a ``label`` ([H, W] integer class ids, the
frame's size). Frames are resized bilinearly to S x S and ImageNet-normalised as RGB (grayscale is
repeated to 3 channels); events are binned onto the S x S grid and the voxel grid spans each
file's first to last event; labels are resized with nearest neighbour. Params: ``bins``,
``representation``, ``num_classes`` (required), ``ignore_index``.
"""

from __future__ import annotations

import functools
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from benchbase.components import DataBundle, DatasetInfo, SegmentationImages
from benchbase.data.camvid import build_camvid
from benchbase.data.camvid import LAYOUT as CAMVID_LAYOUT
from benchbase.data.folders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_root,
    dataset_params,
    drop_unreadable,
    image_tensor,
)
from benchbase.data.scenes import load_digit_scenes
from benchbase.errors import BenchbaseError
from benchbase.events import Events, Motion, Sensor, event_count_frame, simulate_events, voxel_grid, warp
from benchbase.events.simulator import V2E_REFRACTORY

REPRESENTATIONS = ("voxel", "count")
REPRESENTATION_DEFAULTS = {"bins": 3, "representation": "voxel"}
SCENE_DEFAULTS = {"digits_per_scene": (1, 3), "n_train": 600, "n_test": 200, "seed": 0, "digit_size": 16}
""":func:`~benchbase.data.scenes.load_digit_scenes`'s parameters and defaults."""
RECORDING_DEFAULTS = {**REPRESENTATION_DEFAULTS, "num_classes": None, "ignore_index": None}
RECORDING_KEYS = ("x", "y", "t", "p", "frame", "label")
RECORDING_LAYOUT = "{train,test}/*.npz with arrays x, y, t, p, frame, label"
DIGIT_SCENE_EVENTS_INFO = DatasetInfo(kind="segmentation", splits={
    "train": "the digit scenes' train split, each with SIMULATED events of a random camera motion",
    "test": "the test split, alike",
})
CAMVID_EVENTS_INFO = DatasetInfo(layout=CAMVID_LAYOUT, kind="segmentation", splits={
    split: f"CamVid's {split} frames, each with SIMULATED events of a random camera motion"
    for split in ("train", "val", "test")
})
RECORDING_INFO = DatasetInfo(layout=RECORDING_LAYOUT, kind="segmentation", splits={
    "train": "train/*.npz, when present: recorded frames, events and label maps",
    "test": "test/*.npz, when present",
})
SIMULATED_DURATION = 1.0
"""Seconds of the simulated motion; the voxel grid of simulated events spans exactly this window."""


def split_channels(x: Tensor, frame_channels: int) -> tuple[Tensor, Tensor]:
    """(frame, events) of a stacked [..., F + E, S, S] tensor: its first ``frame_channels`` channels
    ([..., F, S, S], the teacher's input) and the rest ([..., E, S, S], the student's input)."""
    return x[..., :frame_channels, :, :], x[..., frame_channels:, :, :]


@dataclass(frozen=True)
class EventRepresentation:
    """How events become a tensor: ``voxel`` ([bins, H, W], normalised) or ``count`` ([2, H, W])."""

    kind: str
    bins: int

    @classmethod
    def from_params(cls, params: Mapping[str, Any], dataset: str) -> EventRepresentation:
        kind, bins = params["representation"], params["bins"]
        if kind not in REPRESENTATIONS:
            raise BenchbaseError(
                f"data.{dataset}.params.representation={kind!r}; use one of {', '.join(REPRESENTATIONS)}"
            )
        if not isinstance(bins, int) or bins < 1:
            raise BenchbaseError(f"data.{dataset}.params.bins={bins!r}; use a whole number >= 1")
        return cls(kind, bins)

    @property
    def channels(self) -> int:
        return self.bins if self.kind == "voxel" else 2

    def __call__(self, events: Events, time_range: tuple[float, float] | None = None) -> Tensor:
        """[channels, H, W] float32; the voxel grid spans ``time_range`` (default: first to last event)."""
        if self.kind == "voxel":
            return voxel_grid(events, self.bins, normalize=True, time_range=time_range)
        return event_count_frame(events)

    def describe(self) -> str:
        if self.kind == "voxel":
            return f"a normalised {self.bins}-bin voxel grid"
        return "positive/negative count frames"


@dataclass(frozen=True)
class SimulationSettings:
    """The SIMULATOR's settings (see :func:`~benchbase.events.simulate_events` and
    :class:`~benchbase.events.Sensor`, whose defaults are v2e's) and the random motion's bounds
    (see :meth:`~benchbase.events.Motion.random`)."""

    contrast_threshold: float = 0.2
    steps: int = 10
    max_translation: float = 2.0
    max_rotation: float = 2.0
    max_scale: float = 0.05
    noise_rate: float = 0.0
    refractory: float = V2E_REFRACTORY
    linlog_threshold: float = Sensor.linlog_threshold
    threshold_sigma: float = Sensor.threshold_sigma
    leak_rate: float = Sensor.leak_rate
    shot_noise_rate: float = Sensor.shot_noise_rate

    @classmethod
    def from_params(cls, params: Mapping[str, Any], dataset: str) -> SimulationSettings:
        try:
            settings = cls(**{f.name: (int if f.name == "steps" else float)(params[f.name]) for f in fields(cls)})
        except (TypeError, ValueError):
            raise BenchbaseError(
                f"data.{dataset}.params: {', '.join(f.name for f in fields(cls))} must be numbers"
            ) from None
        if settings.contrast_threshold <= 0 or settings.steps < 1 or min(
            settings.max_translation, settings.max_rotation, settings.noise_rate, settings.refractory,
            settings.threshold_sigma, settings.leak_rate, settings.shot_noise_rate,
        ) < 0 or not 0 <= settings.max_scale < 1 or not (
            settings.linlog_threshold == 0 or settings.linlog_threshold > 1
        ):
            raise BenchbaseError(
                f"data.{dataset}.params need contrast_threshold > 0, steps >= 1, 0 <= max_scale < 1, "
                "linlog_threshold 0 or > 1 and max_translation, max_rotation, noise_rate, refractory, "
                f"threshold_sigma, leak_rate, shot_noise_rate >= 0; got {settings}"
            )
        return settings

    def sensor(self, seed: int) -> Sensor:
        """The simulated camera: this pixel model with its fixed pattern drawn from ``seed``."""
        return Sensor(self.linlog_threshold, self.threshold_sigma, self.leak_rate, self.shot_noise_rate, seed)

    def describe(self) -> str:
        response = (f"lin-log response (linear below {self.linlog_threshold:g} DN)" if self.linlog_threshold
                    else "log response")
        return (
            f"contrast threshold {self.contrast_threshold} (sigma {self.threshold_sigma:g}), {response}, "
            f"{self.steps} steps over {SIMULATED_DURATION:g} s, "
            f"motion up to {self.max_translation:g} px / {self.max_rotation:g} deg / {self.max_scale:.0%} scale, "
            f"leak {self.leak_rate:g}/px/s, shot noise {self.shot_noise_rate:g}/px/s, "
            f"noise {self.noise_rate:g}/px/s, refractory {self.refractory:g} s"
        )


SIMULATION_DEFAULTS = {**REPRESENTATION_DEFAULTS, **asdict(SimulationSettings()), "cache": False}
"""The simulated datasets' event params and their defaults (on top of each dataset's own)."""


@dataclass
class SimulatedSample:
    """One simulated item before stacking: the final-pose ``frame`` [F, S, S] (normalised as its
    source), the ``events`` of the motion, the ``motion`` itself and the final-pose ``label`` [S, S]."""

    frame: Tensor
    events: Events
    motion: Motion
    label: Tensor


class PairedEvents(SegmentationImages):
    """A dataset of ([F + E, S, S] frame-and-events tensor, [S, S] long label map) pairs."""

    frame_channels: int
    event_channels: int

    def split_channels(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(frame [..., F, S, S], events [..., E, S, S]) of an item's or a batch's tensor."""
        return split_channels(x, self.frame_channels)


def item_generator(seed: int, stream: int, index: int) -> torch.Generator:
    """A CPU generator seeded from (``seed``, ``stream``, ``index``) alone, the same in every process."""
    state = np.random.SeedSequence([seed, stream, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class SimulatedEvents(PairedEvents):
    """SIMULATED events of a segmentation dataset's frames, each moved by its own random motion.

    Args:
        frames: ([F, S, S] normalised image, [S, S] long label) pairs.
        intensity: maps a frame's [F, S, S] image to the [S, S] grayscale intensity in [0, 1] that
            the SIMULATOR sees; a module-level function (or a partial of one) so DataLoader workers
            can pickle it.
        representation: how the events become the E channels.
        settings: the simulator's settings and the motion's bounds.
        seed, stream: with the item's index, seed its motion and noise (``stream`` tells splits apart);
            ``seed`` alone draws the sensor's fixed pattern, shared by every item and split.
        cache: keep finished items in memory.
    """

    def __init__(self, frames: SegmentationImages, frame_channels: int, intensity: Callable[[Tensor], Tensor],
                 representation: EventRepresentation, settings: SimulationSettings, seed: int, stream: int,
                 cache: bool = False):
        self.frames, self.intensity = frames, intensity
        self.representation, self.settings = representation, settings
        self.seed, self.stream = seed, stream
        self.classes = list(frames.classes)
        self.frame_channels, self.event_channels = frame_channels, representation.channels
        self.cache: dict[Any, tuple[Tensor, Tensor]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.frames)

    def sample(self, index: int) -> SimulatedSample:
        """Item ``index``'s final frame, events, motion and final label map (same every call)."""
        image, label = self.frames[index]
        if image.shape[-2:] != label.shape:
            raise BenchbaseError(
                f"frame {index} is {tuple(image.shape[-2:])} but its label map {tuple(label.shape)}; "
                "events are simulated at the label size, so the two must match"
            )
        generator = item_generator(self.seed, self.stream, index)
        s = self.settings
        motion = Motion.random(generator, s.max_translation, s.max_rotation, s.max_scale)
        events = simulate_events(self.intensity(image), motion, s.steps, s.contrast_threshold, s.refractory,
                                 s.noise_rate, SIMULATED_DURATION, generator, s.sensor(self.seed))
        return SimulatedSample(warp(image, motion), events, motion, warp(label, motion, mode="nearest"))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        sample = self.sample(index)
        item = torch.cat([sample.frame, self.representation(sample.events, (0.0, SIMULATED_DURATION))]), sample.label
        if self.cache is not None:
            self.cache[index] = item
        return item

    def evaluation_item(self, index: int) -> tuple[Tensor, Tensor]:
        """The item as scored: the frames' :meth:`evaluation_item` (short side at the image size,
        aspect ratio kept; label at its original H x W) under the item's own motion. Events are
        simulated on the h x w frame; the label map is warped at its original resolution by the
        same motion, its translation scaled by (W / w, H / h) pixels. Where frame and label are the
        item's own S x S (in-memory frames), this is the item itself."""
        key = ("evaluation", index)
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        image, label = self.frames.evaluation_item(index)
        if image.shape[-2:] == label.shape and image.shape[-1] == image.shape[-2]:
            return self[index]
        generator = item_generator(self.seed, self.stream, index)
        s = self.settings
        motion = Motion.random(generator, s.max_translation, s.max_rotation, s.max_scale)
        events = simulate_events(self.intensity(image), motion, s.steps, s.contrast_threshold, s.refractory,
                                 s.noise_rate, SIMULATED_DURATION, generator)
        (height, width), (label_height, label_width) = image.shape[-2:], label.shape
        label_motion = replace(motion, dx=motion.dx * label_width / width, dy=motion.dy * label_height / height)
        item = (torch.cat([warp(image, motion), self.representation(events, (0.0, SIMULATED_DURATION))]),
                warp(label, label_motion, mode="nearest"))
        if self.cache is not None:
            self.cache[key] = item
        return item

    def resized_shape(self, index: int) -> tuple[int, int]:
        return self.frames.resized_shape(index)

    def sequence(self, index: int) -> str | None:
        return self.frames.sequence(index)


def rescaled_intensity(image: Tensor, low: float, high: float) -> Tensor:
    """[H, W] intensity in [0, 1] of a one-channel [1, H, W] image whose values span [low, high]."""
    return ((image[0] - low) / (high - low)).clamp(0, 1)


def imagenet_luma(image: Tensor) -> Tensor:
    """[H, W] luma (ITU-R 601) in [0, 1] of an ImageNet-normalised RGB image [3, H, W]."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    rgb = (image * std + mean).clamp(0, 1)
    return torch.einsum("chw,c->hw", rgb, torch.tensor([0.299, 0.587, 0.114]))


def _simulation_params(cfg: Mapping[str, Any], dataset: str, extra: Mapping[str, Any]) -> tuple[
        dict[str, Any], EventRepresentation, SimulationSettings]:
    params = dataset_params(cfg, dataset, {**extra, **SIMULATION_DEFAULTS})
    return params, EventRepresentation.from_params(params, dataset), SimulationSettings.from_params(params, dataset)


def build_digit_scene_events(cfg: Mapping[str, Any]) -> DataBundle:
    """The digit scenes (:func:`~benchbase.data.scenes.load_digit_scenes`) with SIMULATED events.

    Splits ``train`` and ``test`` of :class:`SimulatedEvents`: items are ([1 + E, S, S], [S, S]),
    the standardised grayscale frame then the events, S = ``cfg.image_size`` (default 32). The
    simulator sees the scene's ink (the frame rescaled to [0, 1] by the train split's range).
    """
    params, representation, settings = _simulation_params(cfg, "digit_scene_events", SCENE_DEFAULTS)
    scenes = load_digit_scenes(image_size=cfg.get("image_size") or 32, **{k: params[k] for k in SCENE_DEFAULTS})
    train_images = scenes.split("train").images
    intensity = functools.partial(rescaled_intensity, low=float(train_images.min()), high=float(train_images.max()))
    splits = {
        name: SimulatedEvents(split, 1, intensity, representation, settings, int(params["seed"]), stream,
                              bool(params["cache"]))
        for stream, (name, split) in enumerate(scenes.splits.items())
    }
    return DataBundle(
        name="digit_scene_events", splits=splits, image_size=scenes.image_size,
        in_chans=1 + representation.channels, num_classes=scenes.num_classes, ignore_index=scenes.ignore_index,
        input_channels={"frame": 1, "events": representation.channels},
        description=(
            f"frame + SIMULATED events: {scenes.description}; each scene moved by a random camera motion, events "
            f"from the simulator ({settings.describe()}) as {representation.describe()}; frame and labels at the "
            f"final pose; channels: 1 frame + {representation.channels} events"
        ),
    )


def build_camvid_events(cfg: Mapping[str, Any]) -> DataBundle:
    """CamVid (:func:`~benchbase.data.camvid.build_camvid`) with SIMULATED events of its frames.

    The splits CamVid has (``train``, ``val``, ``test``) as :class:`SimulatedEvents`: items are
    ([3 + E, S, S], [S, S]), the ImageNet-normalised RGB frame then the events, labels at the
    image size (void = 11 = ``ignore_index``), S = ``cfg.image_size`` (default 224). The simulator
    sees the frame's luma. Frames are decoded and events simulated on access.
    """
    params, representation, settings = _simulation_params(cfg, "camvid_events", {"seed": 0})
    root = check_root(cfg.get("root"), "camvid_events", CAMVID_LAYOUT)
    camvid = build_camvid({"root": str(root), "image_size": cfg.get("image_size") or 224,
                           "on_corrupt": cfg.get("on_corrupt", "error")})
    splits = {
        name: SimulatedEvents(split, 3, imagenet_luma, representation, settings, int(params["seed"]), stream,
                              bool(params["cache"]))
        for stream, (name, split) in enumerate(camvid.splits.items())
    }
    return DataBundle(
        name="camvid_events", splits=splits, image_size=camvid.image_size, in_chans=3 + representation.channels,
        input_channels={"frame": 3, "events": representation.channels},
        num_classes=camvid.num_classes, ignore_index=camvid.ignore_index,
        description=(
            f"frame + SIMULATED events: {camvid.description}; each frame moved by a random camera motion, events "
            f"from the simulator on its luma ({settings.describe()}) as {representation.describe()}; frame and "
            f"labels at the final pose; channels: 3 frame + {representation.channels} events"
        ),
    )


class EventRecordings(PairedEvents):
    """Recorded (frame, events, label) samples, one ``.npz`` file each (see the module docstring).

    Items are ([3 + E, S, S], [S, S] long). Args: ``files``; ``num_classes`` and ``ignore_index``
    (label values outside 0..num_classes-1 other than ``ignore_index`` are errors);
    ``image_size`` = S; ``on_corrupt`` ``error`` or ``skip`` (unreadable files dropped now, listed
    in ``skipped``).
    """

    frame_channels = 3

    def __init__(self, files: Sequence[Path], num_classes: int, ignore_index: int | None, image_size: int,
                 representation: EventRepresentation, on_corrupt: str = "error"):
        self.classes = [str(k) for k in range(num_classes)]
        self.ignore_index, self.image_size, self.representation = ignore_index, image_size, representation
        self.event_channels = representation.channels
        self.files, self.skipped = drop_unreadable(files, self._read, on_corrupt)

    def _read(self, path: Path) -> tuple[Image.Image, Events, Tensor]:
        """(RGB frame, events on the frame's pixels, [H, W] long label) of one file; any problem
        is a one-line :class:`BenchbaseError` naming it."""
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [key for key in RECORDING_KEYS if key not in data.files]
                if missing:
                    raise BenchbaseError(
                        f"event recording {path} has no {', '.join(missing)} array(s); "
                        f"expected {', '.join(RECORDING_KEYS)}"
                    )
                arrays = {key: data[key] for key in RECORDING_KEYS}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise BenchbaseError(f"cannot read event recording {path} ({type(exc).__name__}: {exc}); "
                                 "replace or remove it, or pass on_corrupt=skip") from None
        frame, label = arrays["frame"], arrays["label"]
        if frame.dtype != np.uint8 or not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
            raise BenchbaseError(f"event recording {path}: frame is {frame.dtype} {frame.shape}; "
                                 "expected uint8 [H, W] or [H, W, 3]")
        if label.ndim != 2 or label.shape != frame.shape[:2] or not np.issubdtype(label.dtype, np.integer):
            raise BenchbaseError(f"event recording {path}: label is {label.dtype} {label.shape} but the frame is "
                                 f"{frame.shape[:2]}; expected integer class ids of the frame's size")
        label = torch.from_numpy(label.astype(np.int64))
        allowed = (label >= 0) & (label < len(self.classes))
        if self.ignore_index is not None:
            allowed |= label == self.ignore_index
        if not bool(allowed.all()):
            raise BenchbaseError(f"event recording {path}: label value {int(label[~allowed][0])} is not a class id "
                                 f"(0..{len(self.classes) - 1}) or the ignore_index {self.ignore_index}")
        height, width = label.shape
        try:
            events = Events.from_arrays(*(arrays[k] for k in "xytp"), height, width)
        except (ValueError, TypeError) as exc:
            raise BenchbaseError(f"event recording {path}: {exc}") from None
        return Image.fromarray(frame).convert("RGB"), events, label

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        frame, events, label = self._read(self.files[index])
        size = self.image_size
        label = F.interpolate(label[None, None].float(), size=(size, size), mode="nearest-exact")[0, 0].long()
        return torch.cat([image_tensor(frame, size), self.representation(events.rescaled(size, size))]), label

    def evaluation_item(self, index: int) -> tuple[Tensor, Tensor]:
        """The frame with its short side at S (aspect ratio kept), the events binned onto its grid,
        and the label map as recorded."""
        frame, events, label = self._read(self.files[index])
        image = image_tensor(frame, self.image_size, keep_ratio=True)
        height, width = image.shape[-2:]
        return torch.cat([image, self.representation(events.rescaled(height, width))]), label


def build_event_recordings(cfg: Mapping[str, Any]) -> DataBundle:
    """Real recorded events (not simulated) in the ``.npz`` format: splits ``train`` and ``test``
    present under ``cfg.root``, each an :class:`EventRecordings`; S = ``cfg.image_size`` (default 224)."""
    root = check_root(cfg.get("root"), "event_recordings", RECORDING_LAYOUT)
    params = dataset_params(cfg, "event_recordings", RECORDING_DEFAULTS)
    representation = EventRepresentation.from_params(params, "event_recordings")
    num_classes, ignore_index = params["num_classes"], params["ignore_index"]
    if not isinstance(num_classes, int) or num_classes < 1:
        raise BenchbaseError(f"data.event_recordings.params.num_classes={num_classes!r}; pass the number of classes")
    image_size = cfg.get("image_size") or 224
    splits = {}
    for split in ("train", "test"):
        if (root / split).is_dir():
            files = sorted((root / split).glob("*.npz"))
            if not files:
                raise BenchbaseError(f"{root / split} has no .npz files; expected {RECORDING_LAYOUT}")
            splits[split] = EventRecordings(files, num_classes, ignore_index, image_size, representation,
                                            cfg.get("on_corrupt", "error"))
    if not splits:
        raise BenchbaseError(f"{root} has no train/ or test/ folder; expected {RECORDING_LAYOUT}")
    sizes = ", ".join(f"{name} {len(data)}" for name, data in splits.items())
    return DataBundle(
        name="event_recordings", splits=splits, image_size=image_size, in_chans=3 + representation.channels,
        input_channels={"frame": 3, "events": representation.channels},
        num_classes=num_classes, ignore_index=ignore_index,
        description=(
            f"recorded frames + events at {root}: {sizes} samples, {num_classes} classes, events as "
            f"{representation.describe()} over each file's span; images and labels {image_size}x{image_size}; "
            f"channels: 3 frame + {representation.channels} events"
        ),
    )

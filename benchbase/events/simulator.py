"""An event-camera SIMULATOR: events from one still frame moved by a small camera motion.

The frame is rendered at ``steps + 1`` poses along a :class:`Motion` (its translation, rotation
and scale interpolated linearly from the identity at time 0 to the full motion at ``duration``;
each pose an affine warp of the frame, :func:`warp`). Like ESIM, every pixel keeps a reference log
intensity ``log(LOG_EPS + I)``; whenever the pixel's log intensity moves ``contrast_threshold``
past its reference an event fires (polarity +1 brighter, -1 darker) and the reference moves by one
threshold, so a change of k thresholds within one step fires k events. The log intensity is taken
as linear between two poses and an event's timestamp is the time at which it crosses its level.
A pixel's crossings within ``refractory`` seconds of its previous event are dropped (its reference
still moves, so it follows the scene once the period ends), and ``noise_rate`` adds uniformly
random events. Everything is vectorised over pixels; Python loops run over the steps and over a
step's crossing rank (1st, 2nd, ... event of a pixel within that step), never over events.

Image coordinates are pixel centres with x to the right and y down; the labels and the final frame
of a scene follow it to the final pose with :func:`warp` (``fraction=1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

LOG_EPS = 1e-3
"""Offset of the log intensity, log(LOG_EPS + I), keeping black pixels (I = 0) finite."""

WARP_MODES = ("bilinear", "nearest")

ArrayLike = Union[Tensor, np.ndarray]


@dataclass
class Events:
    """An event stream of a ``height`` x ``width`` sensor, in time order.

    Attributes:
        x: [N] long column of each event, 0 <= x < width.
        y: [N] long row of each event, 0 <= y < height.
        t: [N] float64 timestamps (seconds for simulated events), ascending.
        p: [N] int8 polarity, +1 (brighter) or -1 (darker).
    """

    x: Tensor
    y: Tensor
    t: Tensor
    p: Tensor
    height: int
    width: int

    def __len__(self) -> int:
        return self.t.numel()

    @classmethod
    def from_arrays(cls, x: ArrayLike, y: ArrayLike, t: ArrayLike, p: ArrayLike, height: int, width: int) -> Events:
        """Events from four equally long 1-D arrays (tensors or numpy arrays) in any order and dtype,
        sorted by time (stable).

        A polarity > 0 is +1, anything else (0 or -1, the two usual encodings) is -1. Arrays of
        different lengths or coordinates outside the sensor raise ``ValueError``.
        """
        x, y, t, p = (torch.as_tensor(a).reshape(-1) for a in (x, y, t, p))
        if not x.numel() == y.numel() == t.numel() == p.numel():
            raise ValueError(f"x, y, t, p have {x.numel()}, {y.numel()}, {t.numel()}, {p.numel()} entries")
        x, y = x.long(), y.long()
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        if not bool(inside.all()):
            raise ValueError(
                f"event coordinates x {int(x.min())}..{int(x.max())}, y {int(y.min())}..{int(y.max())} "
                f"fall outside the {width}x{height} sensor"
            )
        t = t.double()
        order = torch.argsort(t, stable=True)
        polarity = torch.where(p[order] > 0, 1, -1).to(torch.int8)
        return cls(x[order], y[order], t[order], polarity, height, width)

    def rescaled(self, height: int, width: int) -> Events:
        """The same events on a ``height`` x ``width`` grid: each event moves to the target pixel
        holding its pixel's centre, (⌊(x + ½)·width / self.width⌋, ⌊(y + ½)·height / self.height⌋),
        as a centre-aligned image resize maps pixels."""
        x = torch.div((2 * self.x + 1) * width, 2 * self.width, rounding_mode="floor")
        y = torch.div((2 * self.y + 1) * height, 2 * self.height, rounding_mode="floor")
        return Events(x, y, self.t, self.p, height, width)


@dataclass(frozen=True)
class Motion:
    """A small camera motion between two poses, seen as the scene moving in the image.

    Scene content at pixel p (relative to the image centre) appears at ``scale · R · p + (dx, dy)``
    in the final pose, R rotating by ``rotation`` degrees counter-clockwise as displayed (y down).
    """

    dx: float = 0.0
    dy: float = 0.0
    rotation: float = 0.0
    scale: float = 1.0

    @classmethod
    def random(cls, generator: torch.Generator | None, max_translation: float = 2.0, max_rotation: float = 2.0,
               max_scale: float = 0.05) -> Motion:
        """A motion with dx, dy uniform in ±``max_translation`` pixels, rotation uniform in
        ±``max_rotation`` degrees and scale uniform in 1 ± ``max_scale``."""
        u = (torch.rand(4, generator=generator, dtype=torch.float64) * 2 - 1).tolist()
        return cls(max_translation * u[0], max_translation * u[1], max_rotation * u[2], 1 + max_scale * u[3])

    def at(self, fraction: float) -> Motion:
        """The pose ``fraction`` of the way from the identity (0) to this motion (1), linearly."""
        return Motion(self.dx * fraction, self.dy * fraction, self.rotation * fraction,
                      1 + (self.scale - 1) * fraction)

    def sampling_matrix(self, height: int, width: int) -> Tensor:
        """[2, 3] float64 ``affine_grid`` matrix (``align_corners=False``) of this pose: for every
        output pixel, where to sample the undisplaced frame, in normalised coordinates."""
        angle = math.radians(self.rotation)
        cos, sin = math.cos(angle), math.sin(angle)
        # forward map on pixel offsets from the centre: p' = scale · R p + d, R = [[cos, sin], [-sin, cos]]
        inverse = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64) / self.scale
        to_pixels = torch.diag(torch.tensor([width / 2, height / 2], dtype=torch.float64))
        to_normalised = torch.diag(torch.tensor([2 / width, 2 / height], dtype=torch.float64))
        linear = to_normalised @ inverse @ to_pixels
        shift = -(to_normalised @ inverse @ torch.tensor([self.dx, self.dy], dtype=torch.float64))
        return torch.cat([linear, shift[:, None]], dim=1)


def _warp_poses(image: Tensor, poses: list[Motion], mode: str) -> Tensor:
    """[P, C, H, W] float: ``image`` ([C, H, W] float) rendered at each pose (border padding)."""
    height, width = image.shape[-2:]
    theta = torch.stack([pose.sampling_matrix(height, width) for pose in poses]).to(image.dtype)
    batch = image.expand(len(poses), *image.shape)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode=mode, padding_mode="border", align_corners=False)


def warp(image: Tensor, motion: Motion, fraction: float = 1.0, mode: str = "bilinear") -> Tensor:
    """``image`` as seen at the pose ``fraction`` of the way along ``motion`` (1 = the final pose).

    Args:
        image: [H, W] or [C, H, W]; a float image, or an integer label map (``mode="nearest"``,
            which keeps the label values: no new values appear).
        mode: ``bilinear`` (images) or ``nearest`` (label maps).

    Returns:
        The warped tensor, same shape and dtype. Pixels that come into view from outside the frame
        repeat the nearest border pixel (for frames and labels alike, so both stay aligned).
    """
    if mode not in WARP_MODES:
        raise ValueError(f"mode={mode!r}; use one of {', '.join(WARP_MODES)}")
    if not image.is_floating_point() and mode != "nearest":
        raise ValueError(f"a {image.dtype} label map is warped with mode='nearest', not {mode!r}")
    planes = image if image.dim() == 3 else image[None]
    work = planes if image.is_floating_point() else planes.double()  # float64 holds any label id exactly
    warped = _warp_poses(work, [motion.at(fraction)], mode)[0]
    warped = warped if image.is_floating_point() else warped.round().to(image.dtype)
    return warped.reshape(image.shape)


def simulate_events(
    frame: Tensor,
    motion: Motion,
    steps: int = 10,
    contrast_threshold: float = 0.2,
    refractory: float = 0.0,
    noise_rate: float = 0.0,
    duration: float = 1.0,
    generator: torch.Generator | None = None,
) -> Events:
    """SIMULATED events of ``frame`` moving along ``motion`` from time 0 to ``duration``.

    Args:
        frame: [H, W] grayscale intensity in [0, 1] at the start pose.
        motion: the camera motion over the whole ``duration``.
        steps: rendered intervals (poses at fractions 0, 1/steps, ..., 1).
        contrast_threshold: log-intensity change that fires one event (> 0).
        refractory: seconds after an event during which the same pixel fires no event.
        noise_rate: uniformly random extra events per pixel per second (Poisson count, uniform
            position, time and polarity); they neither move references nor obey the refractory period.
        generator: draws the noise events (the motion is given).

    Returns:
        :class:`Events` of an H x W sensor, timestamps in [0, ``duration``], ascending.
    """
    if frame.dim() != 2:
        raise ValueError(f"frame must be [H, W] grayscale, got shape {tuple(frame.shape)}")
    if steps < 1 or contrast_threshold <= 0 or refractory < 0 or noise_rate < 0 or duration <= 0:
        raise ValueError(
            f"need steps >= 1, contrast_threshold > 0, refractory >= 0, noise_rate >= 0 and duration > 0; got "
            f"{steps}, {contrast_threshold}, {refractory}, {noise_rate}, {duration}"
        )
    height, width = frame.shape
    poses = [motion.at(step / steps) for step in range(steps + 1)]
    rendered = _warp_poses(frame.double()[None], poses, "bilinear")  # [steps + 1, 1, H, W]
    log_frames = torch.log(LOG_EPS + rendered.clamp(0, 1)).reshape(steps + 1, -1)
    reference = log_frames[0].clone()
    last_event = torch.full_like(reference, -math.inf)
    pixels = [torch.zeros(0, dtype=torch.long)]
    times, signs = [torch.zeros(0, dtype=torch.float64)], [torch.zeros(0, dtype=torch.float64)]
    for step in range(steps):
        start, end = log_frames[step], log_frames[step + 1]
        change = end - reference
        count = torch.floor(change.abs() / contrast_threshold).long()
        sign = torch.sign(change)
        span = end - start
        for rank in range(1, int(count.max()) + 1):
            pixel = (count >= rank).nonzero().squeeze(1)
            level = reference[pixel] + sign[pixel] * rank * contrast_threshold
            # the reference lies within one threshold of the start, so each level is crossed in (0, 1]
            safe_span = torch.where(span[pixel] != 0, span[pixel], 1.0)
            fraction = ((level - start[pixel]) / safe_span).clamp(0, 1)
            time = (step + fraction) / steps * duration
            fires = time - last_event[pixel] >= refractory
            pixel, time = pixel[fires], time[fires]
            last_event[pixel] = time
            pixels.append(pixel)
            times.append(time)
            signs.append(sign[pixel])
        reference += sign * count * contrast_threshold
    pixel, time, sign = torch.cat(pixels), torch.cat(times), torch.cat(signs)
    x, y = pixel % width, torch.div(pixel, width, rounding_mode="floor")
    if noise_rate > 0:
        expected = torch.tensor(noise_rate * height * width * duration, dtype=torch.float64)
        n = int(torch.poisson(expected, generator=generator))
        x = torch.cat([x, torch.randint(width, (n,), generator=generator)])
        y = torch.cat([y, torch.randint(height, (n,), generator=generator)])
        time = torch.cat([time, torch.rand(n, generator=generator, dtype=torch.float64) * duration])
        sign = torch.cat([sign, torch.randint(2, (n,), generator=generator).double() * 2 - 1])
    return Events.from_arrays(x, y, time, sign, height, width)

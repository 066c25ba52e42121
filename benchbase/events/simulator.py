"""An event-camera SIMULATOR: events from one still frame moved by a small camera motion.

The frame is rendered at ``steps + 1`` poses along a :class:`Motion` (its translation, rotation
and scale interpolated linearly from the identity at time 0 to the full motion at ``duration``;
each pose an affine warp of the frame, :func:`warp`). Like ESIM and v2e, every pixel keeps a
reference log intensity; whenever the pixel's log intensity moves its ON threshold above or its
OFF threshold below the reference an event fires (polarity +1 brighter, -1 darker) and the
reference moves by that threshold, so a change of k thresholds within one step fires k events. The
log intensity is taken as linear between two poses and an event's timestamp is the time at which
it crosses its level. A pixel's crossings within ``refractory`` seconds of its previous event are
dropped (its reference still moves, so it follows the scene once the period ends).

The pixel model (:class:`Sensor`) is v2e's DVS model (Hu, Liu and Delbruck, "v2e: From Video
Frames to Realistic DVS Events", CVPRW 2021; https://github.com/SensorsINI/v2e), defaults from its
documented command-line options (``v2ecore/v2e_args.py``) and its ``lin_log`` function
(``v2ecore/emulator_utils.py``):

* log response: v2e's ``lin_log`` on 8-bit digital numbers DN = 255·I, linear up to
  ``linlog_threshold`` DN (default 20) and logarithmic above, ln(DN), continuous at the threshold.
  Near black a change of ΔI moves the response by about 38·ΔI instead of the pure log's
  ΔI / (``LOG_EPS`` + I), so nearly black pixels stop firing on faint changes.
  ``linlog_threshold=0`` is ESIM's pure ``log(LOG_EPS + I)`` (its ``--log_eps`` 0.001).
* threshold mismatch: each pixel's ON and OFF thresholds are drawn once per sensor, independently,
  from N(``contrast_threshold``, ``threshold_sigma``²) clamped at 0.01 (v2e ``--pos_thres`` /
  ``--neg_thres`` 0.2, ``--sigma_thres`` 0.03); the sensor's ``seed`` fixes this pattern.
* leak: each pixel's reference sinks by ``leak_rate`` ON thresholds per second (v2e
  ``--leak_rate_hz`` 0.01), so a static pixel fires ON events at that rate; the per-pixel rate
  spreads log-normally by :data:`LEAK_RATE_SPREAD_DECADES` (v2e ``--noise_rate_cov_decades`` 0.1),
  part of the fixed pattern. A leaking pixel starts at a uniformly random point of its leak cycle
  (its reference between 0 and one ON threshold below the first frame), the steady state of a
  sensor that was running before the clip.
* shot noise: random ON and OFF events (Poisson, half of each polarity) at ``shot_noise_rate``
  per pixel per second (v2e ``--shot_noise_rate_hz`` 0.001) times v2e's intensity factor
  1 - 0.75·(DN + 20) / 275 (0.95 at black, 0.25 at white) and, per polarity, the nominal over
  the pixel's actual threshold.
* refractory period: ``refractory`` seconds (v2e ``--refractory_period`` 0.0005).

Left out on purpose: v2e's photoreceptor low-pass filter (``--cutoff_hz``; its time constant is at
most a few ms, far below a step of the one-second simulated motion), leak jitter and the reset of
a pixel's reference by a shot noise event (negligible at these rates). :data:`IDEAL_SENSOR` turns
every non-ideality off. ``noise_rate`` adds uniformly random events on top (not part of v2e's
model; default 0). Everything is vectorised over pixels; Python loops run over the steps and over
a step's crossing rank (1st, 2nd, ... event of a pixel within that step), never over events.

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
"""Offset of the pure log response, log(LOG_EPS + I), keeping black pixels (I = 0) finite (ESIM's
``--log_eps``); used when a sensor's ``linlog_threshold`` is 0."""

FULL_SCALE_DN = 255.0
"""Digital number of intensity 1: v2e's ``lin_log`` works on 8-bit values."""

MIN_THRESHOLD = 0.01
"""Smallest per-pixel contrast threshold after the mismatch draw (v2e clamps there too)."""

LEAK_RATE_SPREAD_DECADES = 0.1
"""Standard deviation, in decades, of the log-normal per-pixel leak rate (v2e's
``--noise_rate_cov_decades``)."""

SHOT_NOISE_WHITE_FACTOR = 0.25
"""Shot noise rate at white relative to black (v2e's ``SHOT_NOISE_INTEN_FACTOR``)."""

V2E_REFRACTORY = 5e-4
"""v2e's default refractory period in seconds (``--refractory_period``)."""

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


@dataclass(frozen=True)
class SensorPattern:
    """A sensor's fixed pattern noise for an ``H x W`` array, each [H, W] float64.

    Attributes:
        on: per-pixel ON threshold (log intensity).
        off: per-pixel OFF threshold (log intensity, positive).
        leak_rate: per-pixel leak event rate (Hz).
    """

    on: Tensor
    off: Tensor
    leak_rate: Tensor


@dataclass(frozen=True)
class Sensor:
    """A DVS pixel array's non-idealities (v2e's model; see the module docstring for sources).

    Attributes:
        linlog_threshold: digital number (of 255) below which the response is linear (v2e's
            ``lin_log``, 20); 0 gives the pure ``log(LOG_EPS + I)`` (ESIM). Otherwise > 1.
        threshold_sigma: standard deviation of the per-pixel thresholds (v2e ``--sigma_thres``).
        leak_rate: mean leak events per pixel per second (v2e ``--leak_rate_hz``).
        shot_noise_rate: shot noise events (ON + OFF) per pixel per second in the dark (v2e
            ``--shot_noise_rate_hz``).
        seed: draws the fixed pattern (thresholds, leak rates): one seed is one physical sensor.
    """

    linlog_threshold: float = 20.0
    threshold_sigma: float = 0.03
    leak_rate: float = 0.01
    shot_noise_rate: float = 0.001
    seed: int = 0

    def __post_init__(self):
        if not (self.linlog_threshold == 0 or self.linlog_threshold > 1) or min(
                self.threshold_sigma, self.leak_rate, self.shot_noise_rate) < 0:
            raise ValueError(
                f"a sensor needs linlog_threshold 0 or > 1 and threshold_sigma, leak_rate, shot_noise_rate >= 0; "
                f"got {self}"
            )

    def response(self, intensity: Tensor) -> Tensor:
        """The log response (natural log units) to ``intensity`` in [0, 1], any shape, float64.

        With ``linlog_threshold`` T > 0, v2e's ``lin_log`` of DN = 255·I: ln(DN) above T DN and the
        straight line DN·ln(T)/T from 0 below, continuous at T. With T = 0, log(``LOG_EPS`` + I).
        """
        intensity = intensity.double().clamp(0, 1)
        if self.linlog_threshold == 0:
            return torch.log(LOG_EPS + intensity)
        dn, threshold = intensity * FULL_SCALE_DN, self.linlog_threshold
        return torch.where(dn <= threshold, dn * (math.log(threshold) / threshold),
                           torch.log(dn.clamp_min(threshold)))

    def pattern(self, height: int, width: int, contrast_threshold: float) -> SensorPattern:
        """This sensor's fixed pattern for an ``height`` x ``width`` array around the nominal
        ``contrast_threshold``: the same for the same seed and size, whatever else is drawn."""
        generator = torch.Generator().manual_seed(self.seed)
        # standard normals scaled afterwards: the pattern's shape does not depend on the parameters
        z_on, z_off, z_leak = torch.randn(3, height, width, generator=generator, dtype=torch.float64)
        on = (contrast_threshold + self.threshold_sigma * z_on).clamp_min(MIN_THRESHOLD)
        off = (contrast_threshold + self.threshold_sigma * z_off).clamp_min(MIN_THRESHOLD)
        leak = self.leak_rate * torch.pow(10.0, LEAK_RATE_SPREAD_DECADES * z_leak)
        return SensorPattern(on, off, leak)


IDEAL_SENSOR = Sensor(linlog_threshold=0.0, threshold_sigma=0.0, leak_rate=0.0, shot_noise_rate=0.0)
"""An ideal pixel array: pure log(LOG_EPS + I), every pixel at the nominal threshold, no leak and no
shot noise (ESIM's model without its threshold noise)."""


def _shot_noise(intensity: Tensor, pattern: SensorPattern, contrast_threshold: float, rate: float,
                duration: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """(pixel [M] long, time [M] float64, sign [M] float64) of shot noise events, given the
    intensity [steps + 1, N] at the poses: a Poisson count per step, pixel and polarity, each event
    at a uniform time within its step."""
    steps = intensity.shape[0] - 1
    dn = (intensity[:-1] + intensity[1:]) / 2 * FULL_SCALE_DN  # [steps, N], the step's mean
    factor = 1 + (SHOT_NOISE_WHITE_FACTOR - 1) * (dn + 20) / (FULL_SCALE_DN + 20)
    per_polarity = rate / 2 * duration / steps * factor  # expected events per step and polarity
    on = contrast_threshold / pattern.on.reshape(-1)
    off = contrast_threshold / pattern.off.reshape(-1)
    counts = torch.poisson(torch.stack([per_polarity * on, per_polarity * off]), generator=generator).long()
    slot = torch.arange(counts.numel()).repeat_interleave(counts.reshape(-1))  # one entry per event
    pixels = intensity.shape[1]
    polarity, rest = torch.div(slot, steps * pixels, rounding_mode="floor"), slot % (steps * pixels)
    step, pixel = torch.div(rest, pixels, rounding_mode="floor"), rest % pixels
    time = (step + torch.rand(slot.numel(), generator=generator, dtype=torch.float64)) / steps * duration
    return pixel, time, 1.0 - 2.0 * polarity.double()


def simulate_events(
    frame: Tensor,
    motion: Motion,
    steps: int = 10,
    contrast_threshold: float = 0.2,
    refractory: float = V2E_REFRACTORY,
    noise_rate: float = 0.0,
    duration: float = 1.0,
    generator: torch.Generator | None = None,
    sensor: Sensor = Sensor(),
) -> Events:
    """SIMULATED events of ``frame`` moving along ``motion`` from time 0 to ``duration``.

    Args:
        frame: [H, W] grayscale intensity in [0, 1] at the start pose.
        motion: the camera motion over the whole ``duration``.
        steps: rendered intervals (poses at fractions 0, 1/steps, ..., 1).
        contrast_threshold: nominal log-intensity change that fires one event (> 0); the sensor's
            pixels scatter around it.
        refractory: seconds after an event during which the same pixel fires no event (v2e's 0.5 ms).
        noise_rate: uniformly random extra events per pixel per second (Poisson count, uniform
            position, time and polarity; not part of v2e's model); they neither move references nor
            obey the refractory period.
        generator: draws what changes from clip to clip: the leak phases, shot noise and ``noise_rate``
            events (the motion is given; the sensor's fixed pattern comes from ``sensor.seed``).
        sensor: the pixels' response, mismatch, leak and shot noise (default v2e's;
            :data:`IDEAL_SENSOR` for none).

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
    intensity = rendered.clamp(0, 1).reshape(steps + 1, -1)  # [steps + 1, N]
    pattern = sensor.pattern(height, width, contrast_threshold)
    on, off = pattern.on.reshape(-1), pattern.off.reshape(-1)  # [N]
    log_frames = sensor.response(intensity)  # [steps + 1, N]
    reference = log_frames[0].clone()
    if sensor.leak_rate > 0:
        # a reference sinking at rate·ON threshold per second is the same as a log intensity rising
        # at that rate over a fixed reference: fold it in, so crossings stay exact and linear in time
        pose_times = torch.arange(steps + 1, dtype=torch.float64) / steps * duration  # [steps + 1]
        log_frames = log_frames + pose_times[:, None] * (pattern.leak_rate.reshape(-1) * on)[None]
        reference -= torch.rand(reference.shape, generator=generator, dtype=torch.float64) * on  # leak phase
    last_event = torch.full_like(reference, -math.inf)
    pixels = [torch.zeros(0, dtype=torch.long)]
    times, signs = [torch.zeros(0, dtype=torch.float64)], [torch.zeros(0, dtype=torch.float64)]
    for step in range(steps):
        start, end = log_frames[step], log_frames[step + 1]
        change = end - reference
        threshold = torch.where(change > 0, on, off)
        count = torch.floor(change.abs() / threshold).long()
        sign = torch.sign(change)
        span = end - start
        for rank in range(1, int(count.max()) + 1):
            pixel = (count >= rank).nonzero().squeeze(1)
            level = reference[pixel] + sign[pixel] * rank * threshold[pixel]
            # the reference lies within one threshold of the start (below by less than the ON, above by
            # less than the OFF threshold), so each level is crossed in (0, 1]
            safe_span = torch.where(span[pixel] != 0, span[pixel], 1.0)
            fraction = ((level - start[pixel]) / safe_span).clamp(0, 1)
            time = (step + fraction) / steps * duration
            fires = time - last_event[pixel] >= refractory
            pixel, time = pixel[fires], time[fires]
            last_event[pixel] = time
            pixels.append(pixel)
            times.append(time)
            signs.append(sign[pixel])
        reference += sign * count * threshold
    if sensor.shot_noise_rate > 0:
        shot = _shot_noise(intensity, pattern, contrast_threshold, sensor.shot_noise_rate, duration, generator)
        for collected, part in zip((pixels, times, signs), shot):
            collected.append(part)
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

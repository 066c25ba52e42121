"""Dense tensors from event streams: the voxel grid (E2VID/ESIM) and the two-channel count frame.

Both are scatter-adds over all events at once (no Python loop over events).
"""

from __future__ import annotations

import torch
from torch import Tensor

from benchbase.events.simulator import Events


def voxel_grid(events: Events, bins: int = 3, normalize: bool = True,
               time_range: tuple[float, float] | None = None) -> Tensor:
    """The voxel grid of ``events``: [bins, H, W] float32.

    Time is mapped linearly onto [0, bins - 1], from the first to the last event's timestamp
    (E2VID's convention) or over ``time_range`` (start, end) when given (events outside it are
    clamped to its ends). Each event adds its polarity to its pixel in the two nearest bins, split
    bilinearly: at position τ it gives (1 - (τ - ⌊τ⌋))·p to bin ⌊τ⌋ and (τ - ⌊τ⌋)·p to bin ⌊τ⌋ + 1,
    so an unnormalised grid summed over bins is each pixel's polarity sum. With ``normalize`` the
    non-zero cells are standardised by their mean and standard deviation (zeros stay zero), as
    E2VID does.
    """
    if bins < 1:
        raise ValueError(f"a voxel grid needs bins >= 1, got {bins}")
    cells = events.height * events.width
    grid = torch.zeros(bins * cells, dtype=torch.float64)
    if len(events):
        start, end = time_range if time_range is not None else (float(events.t[0]), float(events.t[-1]))
        span = end - start if end > start else 1.0
        position = ((events.t - start) / span * (bins - 1)).clamp(0, bins - 1)  # [N]
        left = position.floor().long()
        right_weight = position - left
        polarity = events.p.double()
        pixel = events.y * events.width + events.x
        grid.index_add_(0, left * cells + pixel, polarity * (1 - right_weight))
        inside = left + 1 < bins
        grid.index_add_(0, ((left + 1) * cells + pixel)[inside], (polarity * right_weight)[inside])
    if normalize:
        nonzero = grid != 0
        if nonzero.any():
            values = grid[nonzero]
            grid[nonzero] = (values - values.mean()) / values.std(unbiased=False).clamp_min(1e-12)
    return grid.reshape(bins, events.height, events.width).float()


def event_count_frame(events: Events) -> Tensor:
    """[2, H, W] float32 event counts per pixel: channel 0 positive, channel 1 negative events."""
    cells = events.height * events.width
    index = (events.p < 0).long() * cells + events.y * events.width + events.x
    return torch.bincount(index, minlength=2 * cells).reshape(2, events.height, events.width).float()

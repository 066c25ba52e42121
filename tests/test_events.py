"""The event-camera simulator, the event representations and the paired frame + event datasets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchbase.data.events import (
    SIMULATION_DEFAULTS,
    EventRecordings,
    SimulatedEvents,
    build_camvid_events,
    build_digit_scene_events,
    build_event_recordings,
    split_channels,
)
from benchbase.errors import BenchbaseError
from benchbase.events import (
    IDEAL_SENSOR,
    LOG_EPS,
    Events,
    Motion,
    Sensor,
    event_count_frame,
    simulate_events,
    voxel_grid,
    warp,
)
from benchbase.events.simulator import V2E_REFRACTORY


def smooth_texture(size: int, seed: int = 0) -> torch.Tensor:
    """[size, size] intensities in (0, 1) with structure at a few pixels' scale."""
    noise = torch.rand(1, 1, size // 4, size // 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[0, 0]


def same_pixel_gaps(events: Events) -> torch.Tensor:
    """Time between consecutive events of the same pixel, for all pixels at once."""
    pixel = events.y * events.width + events.x
    order = torch.argsort(pixel, stable=True)  # events are in time order, so each pixel's stay sorted
    pixel, t = pixel[order], events.t[order]
    same = pixel[1:] == pixel[:-1]
    return (t[1:] - t[:-1])[same]


# --- simulator --------------------------------------------------------------------------------


def test_a_static_scene_produces_no_events():
    events = simulate_events(smooth_texture(32), Motion(), steps=8, contrast_threshold=0.05, sensor=IDEAL_SENSOR)
    assert len(events) == 0 and events.height == events.width == 32
    assert events.x.dtype == events.y.dtype == torch.long and events.p.dtype == torch.int8


def test_brightening_pixels_fire_floor_of_log_change_over_threshold_positive_events():
    # a left-to-right ramp moving left: every pixel sees brighter scene content, monotonically
    width, threshold = 24, 0.15
    frame = (0.05 + 0.9 * torch.arange(width) / (width - 1)).expand(6, width).contiguous()
    motion = Motion(dx=-5.0)
    events = simulate_events(frame, motion, steps=7, contrast_threshold=threshold, sensor=IDEAL_SENSOR)
    assert len(events) > 0 and bool((events.p == 1).all())
    change = torch.log(LOG_EPS + warp(frame.double(), motion)) - torch.log(LOG_EPS + frame.double())
    assert bool((change >= 0).all())
    ratio = change / threshold
    moving = ratio > 0  # all but the last column, which sees the repeated border
    assert int(moving.sum()) == 6 * (width - 1)
    assert float((ratio - ratio.round())[moving].abs().min()) > 1e-6  # no pixel sits exactly on a multiple
    counts = event_count_frame(events)
    assert torch.equal(counts[0], torch.floor(ratio).float()) and counts[1].sum() == 0
    assert counts[0].max() >= 2  # several events of one pixel within a step or across steps


def test_a_translated_vertical_edge_fires_only_near_the_edge_with_the_right_polarity():
    frame = torch.full((16, 32), 0.1)
    frame[:, 16:] = 0.9  # dark left half, bright right half, edge between columns 15 and 16
    for dx, polarity, columns in ((3.0, -1, range(16, 19)), (-3.0, 1, range(13, 16))):
        events = simulate_events(frame, Motion(dx=dx), steps=6, contrast_threshold=0.2,
                                 sensor=Sensor(leak_rate=0, shot_noise_rate=0))  # no noise events
        assert set(events.x.tolist()) == set(columns)  # the columns the edge sweeps over, nothing else
        assert bool((events.p == polarity).all())
        assert events.y.unique().tolist() == list(range(16))  # every row of the edge
        # the edge reaches farther columns later
        first = [float(events.t[events.x == c].min()) for c in columns]
        assert first == sorted(first) if dx > 0 else first == sorted(first, reverse=True)


def test_timestamps_are_sorted_and_within_the_duration():
    events = simulate_events(smooth_texture(32), Motion(dx=2.5, dy=-1.0, rotation=4.0, scale=1.05), steps=5,
                             noise_rate=0.3, duration=0.5, generator=torch.Generator().manual_seed(0))
    assert len(events) > 100 and events.t.dtype == torch.float64
    assert bool((events.t[1:] >= events.t[:-1]).all())
    assert float(events.t.min()) >= 0.0 and float(events.t.max()) <= 0.5
    assert bool((events.x < 32).all() and (events.y < 32).all() and (events.x >= 0).all() and (events.y >= 0).all())
    assert set(events.p.tolist()) == {-1, 1}


def test_the_refractory_period_separates_events_of_a_pixel():
    frame, motion = smooth_texture(32, seed=1), Motion(dx=6.0, rotation=10.0)
    free = simulate_events(frame, motion, steps=10, contrast_threshold=0.05, refractory=0, sensor=IDEAL_SENSOR)
    assert float(same_pixel_gaps(free).min()) < 0.05  # without it, a pixel fires in quick succession
    blocked = simulate_events(frame, motion, steps=10, contrast_threshold=0.05, refractory=0.05,
                              sensor=IDEAL_SENSOR)
    assert float(same_pixel_gaps(blocked).min()) >= 0.05
    assert 0 < len(blocked) < len(free)


def test_noise_adds_about_rate_times_pixels_times_duration_events():
    rate, size, duration = 0.5, 48, 2.0
    events = simulate_events(torch.full((size, size), 0.5), Motion(), noise_rate=rate, duration=duration,
                             generator=torch.Generator().manual_seed(0))
    expected = rate * size * size * duration  # 2304
    assert abs(len(events) - expected) < 5 * math.sqrt(expected)
    assert abs(float((events.p == 1).float().mean()) - 0.5) < 0.05
    again = simulate_events(torch.full((size, size), 0.5), Motion(), noise_rate=rate, duration=duration,
                            generator=torch.Generator().manual_seed(0))
    assert torch.equal(events.t, again.t) and torch.equal(events.x, again.x)


def test_random_motions_lie_within_their_bounds_and_follow_the_generator():
    motions = [Motion.random(torch.Generator().manual_seed(s), 3.0, 5.0, 0.1) for s in range(50)]
    assert all(abs(m.dx) <= 3 and abs(m.dy) <= 3 and abs(m.rotation) <= 5 and abs(m.scale - 1) <= 0.1
               for m in motions)
    assert len({m.dx for m in motions}) == 50
    assert Motion.random(torch.Generator().manual_seed(7)) == Motion.random(torch.Generator().manual_seed(7))
    assert Motion(2.0, -4.0, 10.0, 1.2).at(0.5) == Motion(1.0, -2.0, 5.0, 1.1)


def test_bad_simulator_arguments_are_rejected():
    with pytest.raises(ValueError, match="grayscale"):
        simulate_events(torch.zeros(3, 8, 8), Motion())
    with pytest.raises(ValueError, match="contrast_threshold"):
        simulate_events(torch.zeros(8, 8), Motion(), contrast_threshold=0.0)


# --- the pixel model (v2e's): lin-log response, threshold mismatch, leak, shot noise ----------


NOISELESS = Sensor(threshold_sigma=0.0, leak_rate=0.0, shot_noise_rate=0.0)
"""v2e's lin-log response with every pixel at the nominal threshold and no noise events."""


def pixel_events(events: Events, x: int, y: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(times, polarities) of one pixel's events, in time order."""
    mine = (events.x == x) & (events.y == y)
    return events.t[mine], events.p[mine]


def test_a_pixel_brightening_then_dimming_fires_on_then_off_events():
    # a bright bar on a grey background sweeps across the middle columns: each sees it come and go
    columns = torch.arange(24, dtype=torch.float64)
    frame = (0.2 + 0.7 * torch.exp(-((columns - 5) ** 2) / 4)).expand(3, 24).contiguous()
    for sensor in (NOISELESS, Sensor(leak_rate=0.0, shot_noise_rate=0.0), IDEAL_SENSOR):
        events = simulate_events(frame, Motion(dx=10.0), steps=20, sensor=sensor)
        for x in range(8, 12):  # they see the bar's centre at t = (x - 5) / 10 and its far side by t = 1
            times, polarity = pixel_events(events, x, 1)
            on, off = times[polarity == 1], times[polarity == -1]
            assert len(on) >= 3 and len(off) >= 3
            assert float(on.max()) < float(off.min())  # all ON events, then all OFF events
            assert torch.equal(polarity, torch.sort(polarity, descending=True, stable=True).values)


def test_a_log_linear_ramp_fires_at_the_analytic_threshold_crossings():
    # I(x) = 0.1·exp(g·x) moved left by one pixel per step: pixel x sees ln I = ln 0.1 + g·(x + 5t),
    # a log intensity rising at s = 5g per second, so its k-th event is at t_k = k·θ/s exactly
    g, steps, threshold = 0.12, 5, 0.07
    frame = (0.1 * torch.exp(g * torch.arange(16, dtype=torch.float64))).expand(3, 16).contiguous()
    slope = steps * g
    expected = torch.arange(1, int(slope / threshold) + 1, dtype=torch.float64) * threshold / slope
    assert len(expected) == 8 and float(frame.min()) > 20 / 255  # on the log branch of the lin-log response
    events = simulate_events(frame, Motion(dx=-float(steps)), steps=steps, contrast_threshold=threshold,
                             refractory=0.0, sensor=NOISELESS)
    assert bool((events.p == 1).all())
    for y in range(3):
        for x in range(16 - steps):  # columns whose view stays inside the frame
            times, _ = pixel_events(events, x, y)
            assert torch.allclose(times, expected, rtol=0, atol=1e-9), (x, y)
    # with mismatch each pixel crosses at multiples of its own ON threshold
    sensor = Sensor(threshold_sigma=0.01, leak_rate=0.0, shot_noise_rate=0.0, seed=5)
    pattern = sensor.pattern(3, 16, threshold)
    events = simulate_events(frame, Motion(dx=-float(steps)), steps=steps, contrast_threshold=threshold,
                             refractory=0.0, sensor=sensor)
    for x in (0, 4, 9):
        own = float(pattern.on[2, x])
        times, _ = pixel_events(events, x, 2)
        assert torch.allclose(times, torch.arange(1, int(slope / own) + 1, dtype=torch.float64) * own / slope,
                              rtol=0, atol=1e-9)


def test_near_black_pixels_fire_by_absolute_not_relative_change_under_the_lin_log_response():
    # rows: 0.004 -> 0.008 (dark, x2), 0.3 -> 0.6 (bright, x2), 0 -> 0.05 (the darkest range); the
    # right half of each row slides over columns 3..5
    frame = torch.tensor([[0.004] * 6 + [0.008] * 6, [0.3] * 6 + [0.6] * 6, [0.0] * 6 + [0.05] * 6],
                         dtype=torch.float64)
    motion, swept = Motion(dx=-3.0), [3, 4, 5]
    linlog = event_count_frame(simulate_events(frame, motion, steps=6, refractory=0.0, sensor=NOISELESS))
    pure = event_count_frame(simulate_events(frame, motion, steps=6, refractory=0.0, sensor=IDEAL_SENSOR))
    assert linlog[1].sum() == pure[1].sum() == 0  # only brightening
    # the same relative change: the bright pixel fires floor(ln 2 / 0.2) = 3 events, the dark one none
    # (ΔDN·ln(20)/20 = 0.15 < 0.2); the pure log(1e-3 + I) fired 2 for it
    assert linlog[0, 1, swept].tolist() == [3.0] * 3 and linlog[0, 0].sum() == 0
    assert pure[0, 0, swept].tolist() == [2.0] * 3 and pure[0, 1, swept].tolist() == [3.0] * 3
    # a sweep over all of [0, 0.05] moves the linear branch by 12.75·ln(20)/20 = 1.91: 9 events
    # where the pure log's ln(51) = 3.93 fired 19
    assert linlog[0, 2, swept].tolist() == [9.0] * 3 and pure[0, 2, swept].tolist() == [19.0] * 3
    assert not bool(linlog[:, :, :3].any() or linlog[:, :, 6:].any())  # unswept pixels stay silent
    # the response itself: continuous at 20 DN, linear below, logarithmic above, finite at black
    response = NOISELESS.response(torch.tensor([0.0, 10 / 255, 20 / 255, 40 / 255]))
    assert response.tolist() == pytest.approx([0.0, math.log(20) / 2, math.log(20), math.log(40)])


def test_per_pixel_thresholds_have_the_configured_spread_and_are_fixed_by_the_seed():
    sensor = Sensor(threshold_sigma=0.03, seed=3)
    pattern = sensor.pattern(64, 64, 0.2)
    assert pattern.on.shape == pattern.off.shape == pattern.leak_rate.shape == (64, 64)
    for thresholds in (pattern.on, pattern.off):
        assert float(thresholds.mean()) == pytest.approx(0.2, abs=0.003)
        assert float(thresholds.std()) == pytest.approx(0.03, abs=0.003)
    assert not torch.equal(pattern.on, pattern.off)  # drawn independently
    assert float(torch.corrcoef(torch.stack([pattern.on.flatten(), pattern.off.flatten()]))[0, 1]) < 0.1
    again = Sensor(threshold_sigma=0.03, seed=3).pattern(64, 64, 0.2)
    assert torch.equal(pattern.on, again.on) and torch.equal(pattern.leak_rate, again.leak_rate)
    assert not torch.equal(pattern.on, Sensor(threshold_sigma=0.03, seed=4).pattern(64, 64, 0.2).on)
    assert bool((Sensor(threshold_sigma=0.0).pattern(8, 8, 0.2).on == 0.2).all())
    assert float(Sensor(threshold_sigma=1.0).pattern(64, 64, 0.2).on.min()) == 0.01  # clamped, as v2e
    # leak rates: log-normal, 0.1 decades around the configured rate
    decades = torch.log10(pattern.leak_rate / 0.01)
    assert float(decades.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(decades.std()) == pytest.approx(0.1, abs=0.01)
    # the same sensor gives the same events; the generator only changes the noise
    frame = smooth_texture(32)
    first, second = (simulate_events(frame, Motion(dx=2.0), generator=torch.Generator().manual_seed(0),
                                     sensor=Sensor(leak_rate=1.0, shot_noise_rate=1.0)) for _ in range(2))
    assert torch.equal(first.t, second.t) and torch.equal(first.x, second.x) and torch.equal(first.p, second.p)


def test_leak_and_shot_noise_fire_at_their_configured_rates_on_a_static_scene():
    size, duration = 32, 200.0
    # leak: each static pixel fires ON events every 1/rate seconds, rates spread around 0.05 Hz
    sensor = Sensor(leak_rate=0.05, shot_noise_rate=0.0, seed=1)
    events = simulate_events(torch.full((size, size), 0.5), Motion(), steps=4, duration=duration,
                             generator=torch.Generator().manual_seed(0), sensor=sensor)
    rates = sensor.pattern(size, size, 0.2).leak_rate
    expected = float(rates.sum()) * duration  # about 0.05 · 1.03 · 1024 · 200
    assert bool((events.p == 1).all()) and abs(len(events) - expected) < 0.01 * expected
    counts = event_count_frame(events)[0]
    assert bool(((counts - rates * duration).abs() <= 1).all())  # every pixel within one event of its rate
    times, _ = pixel_events(events, 7, 11)
    assert torch.allclose(times.diff(), torch.full((len(times) - 1,), 1 / float(rates[11, 7]), dtype=torch.float64))
    # shot noise: Poisson, half ON half OFF, 0.95 of the rate at black and 0.25 of it at white (v2e)
    rate = 0.5
    frame = torch.zeros(size, size)
    frame[:, size // 2:] = 1.0
    events = simulate_events(frame, Motion(), steps=4, duration=duration, generator=torch.Generator().manual_seed(1),
                             sensor=Sensor(threshold_sigma=0.0, leak_rate=0.0, shot_noise_rate=rate))
    counts = event_count_frame(events).sum(0)
    pixels = size * size // 2
    for half, factor in ((counts[:, : size // 2], 1 - 0.75 * 20 / 275), (counts[:, size // 2:], 0.25)):
        mean = rate * factor * pixels * duration
        assert abs(float(half.sum()) - mean) < 5 * math.sqrt(mean)
    assert float((events.p == 1).double().mean()) == pytest.approx(0.5, abs=0.02)
    assert float(events.t.min()) >= 0 and float(events.t.max()) <= duration
    with pytest.raises(ValueError, match="linlog_threshold"):
        Sensor(linlog_threshold=0.5)
    with pytest.raises(ValueError, match="leak_rate"):
        Sensor(leak_rate=-1.0)


# --- warping ----------------------------------------------------------------------------------


def test_warped_labels_follow_a_translation_and_keep_their_values():
    label = torch.zeros(12, 12, dtype=torch.long)
    label[2:5, 3:7] = 4
    label[8:10, 1:3] = 255
    moved = warp(label, Motion(dx=3.0, dy=-2.0), mode="nearest")
    assert moved.dtype == torch.long and set(moved.unique().tolist()) <= {0, 4, 255}
    expected = torch.zeros_like(label)
    expected[0:3, 6:10] = 4
    expected[6:8, 4:6] = 255
    expected[:, :3] = expected[:, 3:4]  # the border column repeats into view from the left
    expected[-2:] = expected[-3]  # and the last row from below
    assert torch.equal(moved, expected)
    halfway = warp(label, Motion(dx=4.0), fraction=0.5, mode="nearest")
    assert torch.equal(halfway[:, 2:], label[:, :-2])


def test_rotation_is_counter_clockwise_as_displayed_and_frames_stay_aligned_with_labels():
    label = torch.arange(36).reshape(6, 6)
    assert torch.equal(warp(label, Motion(rotation=90.0), mode="nearest"), torch.rot90(label, 1))
    frame = label.float()[None] / 35
    rotated = warp(frame, Motion(rotation=90.0))
    assert rotated.shape == (1, 6, 6) and torch.allclose(rotated[0], torch.rot90(frame[0], 1), atol=1e-5)
    with pytest.raises(ValueError, match="nearest"):
        warp(label, Motion(dx=1.0))


# --- representations --------------------------------------------------------------------------


def hand_events() -> Events:
    # pixel (x=1, y=0): +1 at t=0 and t=1 (the first and last events); pixel (x=2, y=1): -1 at t=0.25
    return Events.from_arrays(torch.tensor([1, 2, 1]), torch.tensor([0, 1, 0]), torch.tensor([0.0, 0.25, 1.0]),
                              torch.tensor([1, 0, 1]), height=2, width=3)


def test_the_voxel_grid_splits_an_event_between_its_two_nearest_bins():
    grid = voxel_grid(hand_events(), bins=3, normalize=False)
    assert grid.shape == (3, 2, 3) and grid.dtype == torch.float32
    # t = 0.25 of [0, 1] is position 0.5 between bins 0 and 1: half each
    assert grid[:, 1, 2].tolist() == [-0.5, -0.5, 0.0]
    assert grid[:, 0, 1].tolist() == [1.0, 0.0, 1.0]  # the first and last events sit on the end bins
    assert grid.abs().sum() == 3.0
    # over a window (0, 2) the last event lands at position 1: all of it in the middle bin
    windowed = voxel_grid(hand_events(), bins=3, normalize=False, time_range=(0.0, 2.0))
    assert windowed[:, 0, 1].tolist() == [1.0, 1.0, 0.0] and windowed[:, 1, 2].tolist() == [-0.75, -0.25, 0.0]


def test_the_voxel_grid_conserves_polarity_sums_and_normalises_its_nonzero_cells():
    events = simulate_events(smooth_texture(32), Motion(dx=2.0, rotation=3.0), steps=6, noise_rate=0.2,
                             generator=torch.Generator().manual_seed(2))
    counts = event_count_frame(events)
    for bins in (1, 3, 5):
        grid = voxel_grid(events, bins=bins, normalize=False)
        assert grid.shape == (bins, 32, 32)
        assert torch.allclose(grid.sum(0), counts[0] - counts[1], atol=1e-5)
        assert float(grid.sum()) == pytest.approx(float(events.p.sum()), abs=1e-3)
    normalised = voxel_grid(events, bins=3)
    nonzero = normalised[voxel_grid(events, bins=3, normalize=False) != 0]
    assert float(nonzero.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(nonzero.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    empty = Events.from_arrays(*(torch.zeros(0) for _ in range(4)), height=4, width=5)
    assert torch.equal(voxel_grid(empty), torch.zeros(3, 4, 5))


def test_the_count_frame_counts_each_polarity():
    events = simulate_events(smooth_texture(32), Motion(dy=3.0), noise_rate=0.1,
                             generator=torch.Generator().manual_seed(0))
    counts = event_count_frame(events)
    assert counts.shape == (2, 32, 32)
    assert counts[0].sum() == int((events.p == 1).sum()) and counts[1].sum() == int((events.p == -1).sum())
    assert counts.sum() == len(events)
    hand = event_count_frame(hand_events())
    assert hand[0, 0, 1] == 2 and hand[1, 1, 2] == 1 and hand.sum() == 3


def test_events_from_arrays_sort_map_polarity_and_check_the_sensor():
    events = Events.from_arrays(np.array([0, 1, 2]), np.array([0, 0, 1]), np.array([3.0, 1.0, 2.0]),
                                np.array([0, 1, -1]), height=2, width=3)
    assert events.t.tolist() == [1.0, 2.0, 3.0] and events.x.tolist() == [1, 2, 0]
    assert events.p.tolist() == [1, -1, -1]
    assert events.rescaled(4, 6).x.tolist() == [3, 5, 1] and events.rescaled(1, 1).y.tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="outside"):
        Events.from_arrays(np.array([3]), np.array([0]), np.array([0.0]), np.array([1]), height=2, width=3)
    with pytest.raises(ValueError, match="entries"):
        Events.from_arrays(np.array([0, 1]), np.array([0]), np.array([0.0]), np.array([1]), height=2, width=3)


# --- datasets ---------------------------------------------------------------------------------


SCENE_CFG = {"params": {"n_train": 6, "n_test": 3, "seed": 1}}


@pytest.fixture(scope="module")
def scene_events():
    return build_digit_scene_events(SCENE_CFG)


def test_digit_scene_events_stack_frame_and_events_with_labels_at_the_final_pose(scene_events):
    assert scene_events.name == "digit_scene_events" and list(scene_events.splits) == ["train", "test"]
    assert scene_events.in_chans == 4 and scene_events.num_classes == 11 and scene_events.image_size == 32
    assert "SIMULATED" in scene_events.description
    train = scene_events.split("train")
    assert isinstance(train, SimulatedEvents) and len(train) == 6
    assert train.frame_channels == 1 and train.event_channels == 3
    x, label = train[0]
    assert x.shape == (4, 32, 32) and x.dtype == torch.float32
    assert label.shape == (32, 32) and label.dtype == torch.long
    frame, events = train.split_channels(x)
    assert frame.shape == (1, 32, 32) and events.shape == (3, 32, 32) and events.abs().sum() > 0
    batch = torch.stack([x, train[1][0]])
    assert [t.shape for t in split_channels(batch, 1)] == [(2, 1, 32, 32), (2, 3, 32, 32)]
    sample = train.sample(0)
    assert torch.equal(sample.frame, frame) and torch.equal(sample.label, label)
    assert sample.motion != train.sample(1).motion and len(sample.events) > 0
    # the labels moved with the scene: the digits' labelled pixels are the bright ones of the moved frame
    foreground = label > 0
    assert frame[0][foreground].mean() > frame[0][~foreground].mean() + 1.0
    source_label = train.frames[0][1]
    assert set(label.unique().tolist()) <= set(source_label.unique().tolist())
    assert torch.equal(label, warp(source_label, sample.motion, mode="nearest"))
    # events fire where the scene has edges: within 4 pixels of the final pose's labelled digits
    # (the motion moves them up to ~3 pixels, and faint ink below the label threshold fires too);
    # elsewhere only the sensor's leak and shot noise (about 0.01 events per pixel in the second)
    near_digits = torch.nn.functional.max_pool2d(foreground[None].float(), 9, 1, 4)[0] > 0
    assert not bool(near_digits.all())
    far = ~near_digits[sample.events.y, sample.events.x]
    assert int(far.sum()) <= 40 < len(sample.events) // 10


def test_digit_scene_events_are_deterministic_per_index_and_differ_between_splits(scene_events):
    again = build_digit_scene_events(SCENE_CFG)
    for name in ("train", "test"):
        for index in (0, 2):
            first, second = scene_events.split(name)[index], again.split(name)[index]
            assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert scene_events.split("train").sample(0).motion != scene_events.split("test").sample(0).motion
    other = build_digit_scene_events({"params": {**SCENE_CFG["params"], "seed": 2}})
    assert other.split("train").sample(0).motion != scene_events.split("train").sample(0).motion


def test_digit_scene_event_params_choose_the_representation_and_are_checked():
    counts = build_digit_scene_events({"image_size": 24, "params": {
        "n_train": 2, "n_test": 1, "representation": "count", "max_translation": 3.0, "cache": True,
    }})
    train = counts.split("train")
    assert counts.in_chans == 3 and train.event_channels == 2
    x, _ = train[0]
    assert x.shape == (3, 24, 24)
    _, events = train.split_channels(x)
    assert events.sum() == len(train.sample(0).events) and train[0][0] is x  # counts; cached
    with pytest.raises(BenchbaseError, match="representation"):
        build_digit_scene_events({"params": {"representation": "surface"}})
    with pytest.raises(BenchbaseError, match="contrast_threshold > 0"):
        build_digit_scene_events({"params": {"contrast_threshold": 0}})
    with pytest.raises(BenchbaseError, match="unknown key"):
        build_digit_scene_events({"params": {"threshold": 0.1}})


def test_simulated_datasets_default_to_v2e_pixels_and_can_switch_them_off():
    v2e = {"contrast_threshold": 0.2, "threshold_sigma": 0.03, "linlog_threshold": 20.0, "leak_rate": 0.01,
           "shot_noise_rate": 0.001, "refractory": 5e-4}
    assert {key: SIMULATION_DEFAULTS[key] for key in v2e} == v2e and V2E_REFRACTORY == 5e-4
    bundle = build_digit_scene_events({"params": {"n_train": 2, "n_test": 1}})
    assert "lin-log response" in bundle.description and "leak 0.01/px/s" in bundle.description
    ideal = build_digit_scene_events({"params": {"n_train": 2, "n_test": 1, "linlog_threshold": 0, "threshold_sigma": 0,
                                                 "leak_rate": 0, "shot_noise_rate": 0, "refractory": 0}})
    train = ideal.split("train")
    image, _ = train.frames[0]
    sample = train.sample(0)
    old = simulate_events(train.intensity(image), sample.motion, refractory=0.0, sensor=IDEAL_SENSOR)
    assert torch.equal(sample.events.t, old.t) and torch.equal(sample.events.x, old.x)  # the ideal log pixel
    assert len(bundle.split("train").sample(0).events) < len(sample.events)  # fewer near-black events
    for key, value in (("threshold_sigma", -0.1), ("linlog_threshold", 0.5), ("shot_noise_rate", -1)):
        with pytest.raises(BenchbaseError, match=key):
            build_digit_scene_events({"params": {key: value}})


def test_camvid_events_pair_rgb_frames_with_simulated_events(camvid_root):
    bundle = build_camvid_events({"root": str(camvid_root), "image_size": 48, "params": {"bins": 2}})
    assert bundle.name == "camvid_events" and "train" in bundle.splits and bundle.ignore_index == 11
    assert bundle.in_chans == 5 and bundle.num_classes == 11 and "SIMULATED" in bundle.description
    train = bundle.split("train")
    assert train.frame_channels == 3 and train.event_channels == 2 and len(train) > 100
    for index in (0, 1):
        x, label = train[index]
        assert x.shape == (5, 48, 48) and label.shape == (48, 48)
        assert int(label.min()) >= 0 and int(label.max()) <= 11
        assert torch.equal(x, train[index][0])  # deterministic per index
        sample = train.sample(index)
        assert len(sample.events) > 50 and set(sample.events.p.tolist()) == {-1, 1}
        source_image, source_label = train.frames[index]
        assert torch.equal(label, warp(source_label, sample.motion, mode="nearest"))
        assert torch.allclose(x[:3], warp(source_image, sample.motion))
        assert train.sequence(index) == train.frames.sequence(index) is not None  # CamVid's recordings
    with pytest.raises(BenchbaseError, match="camvid_events"):
        build_camvid_events({})


# --- recordings -------------------------------------------------------------------------------


def write_recording(path: Path, seed: int, height: int = 20, width: int = 30, gray: bool = False, **override):
    rng = np.random.default_rng(seed)
    n = 200
    arrays = {
        "x": rng.integers(0, width, n).astype(np.uint16),
        "y": rng.integers(0, height, n).astype(np.uint16),
        "t": np.sort(rng.uniform(0, 5e4, n)),  # microseconds, as many cameras store them
        "p": rng.integers(0, 2, n).astype(np.uint8),
        "frame": rng.integers(0, 256, (height, width) if gray else (height, width, 3)).astype(np.uint8),
        "label": rng.integers(0, 4, (height, width)).astype(np.int32),
    }
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


@pytest.fixture
def recordings(tmp_path) -> Path:
    for split, count in (("train", 3), ("test", 2)):
        (tmp_path / split).mkdir()
        for i in range(count):
            write_recording(tmp_path / split / f"{i:03d}.npz", seed=10 * count + i, gray=i == 1)
    return tmp_path


def test_recordings_stack_the_frame_and_the_recorded_events(recordings):
    bundle = build_event_recordings({"root": str(recordings), "image_size": 16, "params": {"num_classes": 4}})
    assert list(bundle.splits) == ["train", "test"] and bundle.in_chans == 6 and bundle.num_classes == 4
    assert [len(s) for s in bundle.splits.values()] == [3, 2] and "SIMULATED" not in bundle.description
    train = bundle.split("train")
    assert isinstance(train, EventRecordings) and train.frame_channels == 3 and train.event_channels == 3
    arrays = np.load(recordings / "train" / "000.npz")
    x, label = train[0]
    assert x.shape == (6, 16, 16) and label.shape == (16, 16) and label.dtype == torch.long
    events = Events.from_arrays(*(torch.from_numpy(arrays[k]) for k in "xytp"), height=20, width=30)
    _, event_channels = train.split_channels(x)
    assert torch.allclose(event_channels, voxel_grid(events.rescaled(16, 16), bins=3))
    assert set(label.unique().tolist()) <= set(np.unique(arrays["label"]).tolist())
    gray, _ = train[1]  # a grayscale frame becomes three equal channels
    assert torch.allclose(gray[0] * 0.229 + 0.485, gray[1] * 0.224 + 0.456, atol=1e-5)
    counts = build_event_recordings({"root": str(recordings), "image_size": 16,
                                     "params": {"num_classes": 4, "representation": "count"}})
    assert counts.split("test")[0][0][3:].sum() == 200


def test_recording_problems_are_one_line_errors_naming_the_file(recordings):
    cfg = {"root": str(recordings), "image_size": 16, "params": {"num_classes": 4}}
    bad = recordings / "train" / "bad.npz"
    cases = {
        "no label": dict(label=None),
        "label is": dict(label=np.zeros((10, 30), dtype=np.int32)),
        "outside": dict(x=np.full(200, 30, dtype=np.uint16)),
        "not a class id": dict(label=np.full((20, 30), 9, dtype=np.int32)),
        "uint8": dict(frame=np.zeros((20, 30, 3), dtype=np.float32)),
    }
    for message, override in cases.items():
        write_recording(bad, seed=0, **override)
        dataset = build_event_recordings(cfg).split("train")
        with pytest.raises(BenchbaseError, match=message) as error:
            dataset[len(dataset) - 1]
        assert str(bad) in str(error.value) and "\n" not in str(error.value)
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(BenchbaseError, match="cannot read event recording .*bad.npz"):
        build_event_recordings(cfg).split("train")[3]
    skipping = build_event_recordings({**cfg, "on_corrupt": "skip"}).split("train")
    assert len(skipping) == 3 and skipping.skipped == [bad]
    with pytest.raises(BenchbaseError, match="num_classes"):
        build_event_recordings({"root": str(recordings)})
    with pytest.raises(BenchbaseError, match="no train/ or test/"):
        build_event_recordings({"root": str(recordings / "train"), "params": {"num_classes": 4}})
    with pytest.raises(BenchbaseError, match="event_recordings"):
        build_event_recordings({"params": {"num_classes": 4}})


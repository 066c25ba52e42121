"""Event cameras: a SIMULATOR of events from a moving frame, and dense event representations."""

from benchbase.events.representations import event_count_frame, voxel_grid
from benchbase.events.simulator import LOG_EPS, Events, Motion, simulate_events, warp

__all__ = ["LOG_EPS", "Events", "Motion", "event_count_frame", "simulate_events", "voxel_grid", "warp"]

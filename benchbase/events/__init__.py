"""Event cameras: a SIMULATOR of events from a moving frame, and dense event representations."""

from benchbase.events.representations import event_count_frame, voxel_grid
from benchbase.events.simulator import (
    IDEAL_SENSOR,
    LOG_EPS,
    Events,
    Motion,
    Sensor,
    SensorPattern,
    simulate_events,
    warp,
)

__all__ = ["IDEAL_SENSOR", "LOG_EPS", "Events", "Motion", "Sensor", "SensorPattern", "event_count_frame",
           "simulate_events", "voxel_grid", "warp"]

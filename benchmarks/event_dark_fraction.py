"""Share of the digit-scene events fired by near-black pixels, with the v2e pixel and the ideal pure-log pixel.

A pixel counts as near-black when its intensity stays at or below ``--dark`` (0.05) at every
rendered pose of its scene's motion. Both sensors simulate the same scenes (train and test splits
of ``digit_scene_events`` with its default params) in one run. Prints one JSON line.

    OMP_NUM_THREADS=1 python benchmarks/event_dark_fraction.py
"""

from __future__ import annotations

import argparse
import json

import torch

from benchbase.data.events import build_digit_scene_events
from benchbase.events.simulator import warp

IDEAL = {"linlog_threshold": 0.0, "threshold_sigma": 0.0, "leak_rate": 0.0, "shot_noise_rate": 0.0, "refractory": 0.0}


def dark_share(params: dict, dark: float) -> dict:
    """Events, events from near-black pixels and their share over the train and test scenes."""
    bundle = build_digit_scene_events({"params": params})
    total = from_dark = scenes = 0
    for split in ("train", "test"):
        data = bundle.split(split)
        for i in range(len(data)):
            image, _ = data.frames[i]
            sample = data.sample(i)
            intensity = data.intensity(image).double().reshape(image.shape[-2:])  # [H, W]
            steps = data.settings.steps
            peak = torch.stack([warp(intensity, sample.motion, k / steps) for k in range(steps + 1)])
            is_dark = peak.clamp(0, 1).amax(dim=0) <= dark  # [H, W]
            total += len(sample.events)
            from_dark += int(is_dark[sample.events.y, sample.events.x].sum())
            scenes += 1
    return {"events": total, "from_near_black": from_dark, "share": round(from_dark / total, 4),
            "events_per_scene": round(total / scenes, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dark", type=float, default=0.05, help="near-black: peak intensity at or below this")
    args = parser.parse_args()
    print(json.dumps({"dark": args.dark, "v2e": dark_share({}, args.dark), "ideal_log": dark_share(IDEAL, args.dark)}))


if __name__ == "__main__":
    main()

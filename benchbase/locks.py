"""A lock file that lets one process at a time build a cached artefact (recipe teacher, stage) or
make one run (a method and seed of a suite)."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from benchbase import distributed


@contextlib.contextmanager
def building(folder: Path) -> Iterator[None]:
    """Hold ``<folder>.lock`` (an advisory ``flock``) while this process checks for and builds the
    artefact in ``folder``: jobs launched together (a sweep, a Slurm array) that need the same one
    wait for the first and then load it instead of training it into the same folder. Under
    torchrun only rank 0 takes the lock; the other ranks follow rank 0."""
    if not distributed.is_main():
        yield
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

"""Jobs that need the same cached artefact (recipe teacher, stage) build it one at a time, and two
processes making the same run (method and seed) make it one after the other."""

from __future__ import annotations

import subprocess
import sys
import time

from benchbase.cli import main
from benchbase.locks import building

from test_run import instant

HOLDER = """
import sys, time
from pathlib import Path
from benchbase.locks import building
folder = Path(sys.argv[1])
with building(folder):
    print("locked", flush=True)
    time.sleep(1.0)
    folder.mkdir()
    (folder / "teacher.pt").write_text("built")
"""


def test_a_second_builder_waits_for_the_first_and_then_finds_its_result(tmp_path):
    folder = tmp_path / "teachers" / "abc"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    started = time.perf_counter()
    with building(folder):
        waited = time.perf_counter() - started
        assert (folder / "teacher.pt").read_text() == "built"  # the first job's artefact, not a rebuild
    assert holder.wait(timeout=30) == 0 and waited > 0.3


HOLD_THEN_STAMP = """
import sys, time
from pathlib import Path
from benchbase.locks import building
with building(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(1.5)
    Path(sys.argv[2]).write_text(repr(time.time()))
"""


def test_a_second_process_making_the_same_run_waits_for_the_first(tmp_path):
    """Two `benchbase run` processes on one home (e.g. one per core) never train one run into the
    same folder at once: the second waits for the first's lock before it checks for a stored
    record, resumes or (here, with --force) starts over."""
    overrides = instant(tmp_path)
    assert main(["run", "--methods", "feature", *overrides]) == 0
    (run_dir,) = (tmp_path / "runs" / "digits").glob("feature-seed0-*")
    stamp = tmp_path / "released"
    lock = run_dir.with_name(f".{run_dir.name}")  # building() locks <this>.lock
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THEN_STAMP, str(lock), str(stamp)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    assert main(["run", "--methods", "feature", "--force", *overrides]) == 0
    assert holder.wait(timeout=30) == 0
    assert (run_dir / "config.yaml").stat().st_mtime >= float(stamp.read_text())  # written after the release

"""Jobs that need the same cached artefact (recipe teacher, stage) build it one at a time."""

from __future__ import annotations

import subprocess
import sys
import time

from benchbase.locks import building

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

"""Hydra launchers: a sweep through submitit's local executor runs each job as a real submitit job
(pickled, started in its own process) that lands in the results database, and a job that gets
submitit's preemption signal mid-training is requeued and resumes from its mid-epoch checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchbase.config import compose_config
from benchbase.data.digits import load_digits_bundle
from benchbase.launch import job_arguments
from benchbase.loggers import STEPS_LOG
from benchbase.models import save_weights
from benchbase.plugin_manager import load
from benchbase.results import ResultsDB


def test_job_arguments_turn_method_into_the_method_to_run():
    assert job_arguments(["method=feature", "seed=1", "method.params.beta=2"]) == (
        ["seed=1", "method.params.beta=2"], ["feature"])
    assert job_arguments(["seed=1"]) == (["seed=1"], None)


def sweep(tmp_path: Path, launcher: str, *extra: str, seeds: str = "0,1") -> list[str]:
    """A sweep (feature, one job per seed in ``seeds``) of a tiny digits suite through ``launcher``."""
    # A teacher from a checkpoint: jobs that run at once must not each train the recipe teacher.
    bb, home = load(), tmp_path / "home"
    cfg = compose_config(["suite=digits"], bb.config_dirs())
    save_weights(bb.registry.get("teachers", cfg.teacher.arch)(cfg.teacher, load_digits_bundle()).model, tmp_path / "t.pt")
    return [sys.executable, "-m", "benchbase.launch", "-m", launcher, "method=feature", "suite=digits", f"seed={seeds}",
            "trainer.progress=false", "suite.references=[]", "~suite.tasks.fewshot", "~suite.tasks.segmentation",
            "teacher.source=checkpoint", f"teacher.checkpoint={tmp_path}/t.pt", f"home={home}",
            f"leaderboard_dir={home}/lb", f"hydra.sweep.dir={tmp_path}/sweep", *extra]


def stored(home: Path) -> list[tuple[int, str]]:
    return sorted((r.seed, r.status) for r in ResultsDB(home / "results.db").records("digits") if r.method == "feature")


@pytest.mark.timeout(900)
def test_a_submitit_job_of_two_tasks_trains_data_parallel(tmp_path):
    """Two tasks of one submitit job become two torchrun-style processes (gloo on the CPU)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "trainer.epochs=1",
                 seeds="0")
    done = subprocess.run(args, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    records = [r for r in ResultsDB(tmp_path / "home" / "results.db").records("digits") if r.method == "feature"]
    assert [(r.status, r.device.endswith("x 2 processes")) for r in records] == [("done", True)]


def _open_step_logs(root: Path) -> dict[Path, int]:
    """The process id that holds each step log under ``root`` open (a run training now), from /proc."""
    found = {}
    for fds in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fds.iterdir():
                target = os.readlink(fd)
                if target.startswith(str(root)) and target.endswith(STEPS_LOG):
                    found[Path(target)] = int(fds.parent.name)
        except OSError:  # the process ended or is not ours to read
            continue
    return found


@pytest.mark.timeout(900)  # four process starts and two tiny runs: minutes on a busy 2-core machine
def test_submitit_local_sweep_stores_every_job_and_a_preempted_job_resumes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("finding the training processes needs Linux's /proc")
    home = tmp_path / "home"
    args = sweep(tmp_path, "hydra/launcher=submitit_local", "trainer.epochs=3")
    launcher = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    preempted, deadline = set(), time.time() + 400
    while len(preempted) < 2 and launcher.poll() is None and time.time() < deadline:
        for log, pid in _open_step_logs(home).items():
            if log not in preempted and log.read_text().count("\n") >= 4:
                os.kill(pid, signal.SIGUSR2)  # what Slurm sends a submitit job before ending it
                preempted.add(log)
        time.sleep(0.05)
    output = launcher.communicate(timeout=400)[0]
    assert launcher.returncode == 0, output
    assert len(preempted) == 2, "both jobs should have been caught training"
    assert stored(home) == [(0, "done"), (1, "done")]
    jobs = [folder for folder in (tmp_path / "sweep" / ".submitit").iterdir() if folder.name.isdigit()]
    assert len(jobs) == 2
    for job in jobs:
        text = "".join(p.read_text() for p in job.glob("*_log.*"))
        assert "Requeued job" in text  # submitit requeued it ...
        resumed = [line for line in text.splitlines() if line.startswith("resuming ")]
        assert len(resumed) == 1 and ", batch " in resumed[0]  # ... and it resumed mid-epoch
    for log in preempted:
        steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) > 4  # each step once, training finished


@pytest.mark.timeout(900)
def test_ray_launcher_sweep_stores_every_job(tmp_path):
    """Hydra's Ray launcher on a local Ray instance (the ``ray`` extra; skipped where it is not installed)."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    args = sweep(tmp_path, "hydra/launcher=ray", "trainer.epochs=1", "+hydra.launcher.ray.init.num_cpus=2")
    done = subprocess.run(args, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    assert stored(tmp_path / "home") == [(0, "done"), (1, "done")]

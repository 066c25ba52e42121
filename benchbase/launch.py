"""Hydra's own entry point, so that Hydra's launcher plugins can run benchbase's jobs on a cluster.

``benchbase run -m`` runs the jobs of a sweep one after another in its own process. Hydra's
launcher plugins (submitit for Slurm, Ray for a Ray cluster) start each job elsewhere and need a
``@hydra.main`` task function: this module is that application. Each job runs one suite with that
job's overrides, as ``benchbase run`` does; ``method=NAME`` selects the method as ``--methods NAME``
does (``method=a,b`` sweeps over methods, one job each); without it every installed method runs.
Stored runs are reused, so a rerun or a requeued job skips what is done.

    python -m benchbase.launch -m hydra/launcher=submitit_local method=feature seed=0,1
    python -m benchbase.launch -m hydra/launcher=slurm hydra.launcher.partition=gpu method=feature,mae

``hydra/launcher=slurm`` is benchbase's preset of submitit's Slurm launcher (``conf/hydra/launcher``);
with ``hydra.launcher.tasks_per_node=N`` (and N GPUs) a job trains data-parallel: each task turns
submitit's environment into torchrun's (``RANK``, ``WORLD_SIZE``, ...; see
:mod:`benchbase.distributed`). A job that Slurm preempts or times out is requeued by submitit and
resumes from its run's checkpoint (see :mod:`benchbase.preemption`).
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from benchbase import distributed
from benchbase.config import register_configs
from benchbase.methods import KIND


def job_arguments(overrides: list[str]) -> tuple[list[str], list[str] | None]:
    """A job's task overrides split into ``benchbase run``'s: the overrides without ``method=NAME``,
    and the methods to run (``[NAME]``, or None for every installed method)."""
    methods = [o.split("=", 1)[1] for o in overrides if o.startswith("method=")]
    return [o for o in overrides if not o.startswith("method=")], methods or None


def torchrun_env_from_submitit() -> None:
    """In a submitit job of several tasks, export torchrun's variables (``MASTER_ADDR``, ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ...) from submitit's job environment; otherwise nothing."""
    if "WORLD_SIZE" in os.environ:
        return
    try:
        import submitit

        job = submitit.JobEnvironment()
    except (ImportError, RuntimeError):  # not installed, or not inside a submitit job
        return
    if job.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export()


def run_job(_cfg: DictConfig) -> None:
    """Hydra's task function: one suite with this job's overrides (Hydra composed and validated them)."""
    from benchbase.plugin_manager import load
    from benchbase.suite import run_suite

    overrides, methods = job_arguments(list(HydraConfig.get().overrides.task))
    torchrun_env_from_submitit()
    distributed.init_from_env()
    try:
        run_suite(load(), overrides, methods)
    finally:
        distributed.shutdown()


def main() -> None:
    """Add the plugins' config dirs to Hydra's search path, then hand the command line to Hydra."""
    from benchbase.plugin_manager import load

    bb = load()
    sys.argv += register_configs(bb.config_dirs(), bb.registry.names(KIND))
    hydra.main(config_path="conf", config_name="config", version_base="1.3")(run_job)()


if __name__ == "__main__":
    main()

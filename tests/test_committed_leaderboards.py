"""The tables committed in leaderboards/ are exactly what their committed run records produce."""

from __future__ import annotations

from benchbase.leaderboard import RESULTS_DIR, check
from benchbase.results import read_jsonl

from conftest import LEADERBOARDS


def test_every_committed_table_is_generated_from_its_records():
    records = sorted((LEADERBOARDS / RESULTS_DIR).glob("*.jsonl"))
    assert records, "leaderboards/results/ holds no run records"
    for path in records:
        runs = read_jsonl(path)
        assert runs and all(r.suite == path.stem for r in runs)
        assert (LEADERBOARDS / f"{path.stem}.md").exists() and (LEADERBOARDS / f"{path.stem}.csv").exists()
    assert check(LEADERBOARDS) == []


def test_committed_records_keep_their_config_hashes():
    """What names a run is unchanged: each committed record's config still hashes to its key (cache
    keys and reuse checks grew, run hashes did not), so new runs supersede them by hash."""
    from omegaconf import OmegaConf

    from benchbase.config import config_hash
    from benchbase.methods import Methods, run_identity
    from benchbase.plugin_manager import load
    from benchbase.stages import plan

    methods = Methods(load(), [])

    for path in sorted((LEADERBOARDS / RESULTS_DIR).glob("*.jsonl")):
        for record in read_jsonl(path):
            cfg = OmegaConf.create({k: v for k, v in record.config.items() if k != "ablation"})
            if record.role == "teacher":
                identity = run_identity(cfg, "teacher", "teacher", {}, 0)
            elif record.role == "floor":  # no method config: the floor's name and seed (suite.run_floor)
                identity = run_identity(cfg, "floor", record.method, {}, record.seed)
            else:
                keys = [s.key for s in plan(methods, cfg, record.seed)]
                params = OmegaConf.to_container(cfg.method.params, resolve=True) or {}
                named = methods.identity_params(record.method, params)  # as suite.run_method names them
                identity = run_identity(cfg, record.role, record.method, named, record.seed, keys)
            assert config_hash(identity) == record.config_hash, (path.name, record.method, record.seed)

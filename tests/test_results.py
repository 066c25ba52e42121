"""The results database: save/find/replace, exact round trips, concurrent writers, bad files, JSONL."""

from __future__ import annotations

import json
import math
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from benchbase.components import Metric
from benchbase.errors import BenchbaseError
from benchbase.results import FRAME_COLUMNS, ResultsDB, RunRecord, record_from_dict, record_to_dict


def make_record(config_hash: str, status: str = "done", suite: str = "default", **overrides) -> RunRecord:
    fields = dict(
        config_hash=config_hash,
        suite=suite,
        method="feature",
        teacher="vit_digits",
        student="vit_tiny",
        dataset="digits",
        seed=0,
        status=status,
        metrics=[
            Metric("top1", 0.8312345678901234, 450, "linear probe, base_test", None, {"task": "top1"}),
            Metric("acc_5shot", 71.25, 2000, "5-way 5-shot, 15 queries", 0.4321, {"task": "fewshot", "shots": 5}),
        ]
        if status == "done"
        else [],
        config={"trainer": {"epochs": 3, "lr": 1e-3, "betas": [0.9, 0.999]}, "method": {"name": "feature"}},
        error="" if status == "done" else "loss is NaN",
        failed_step=None if status == "done" else 17,
        git_rev="abc123",
        versions={"benchbase": "0.1.0", "torch": "2.4.0"},
        device="cpu",
        wall_time=12.5,
        run_dir="/tmp/runs/x",
    )
    fields.update(overrides)
    return RunRecord(**fields)


@pytest.fixture
def db(tmp_path: Path) -> ResultsDB:
    return ResultsDB(tmp_path / "nested" / "dir" / "results.db")


def test_creates_parent_dirs_and_wal(db: ResultsDB) -> None:
    assert db.path.is_file()
    with sqlite3.connect(db.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ResultsDB(db.path).records() == []  # reopening an existing database works


def test_save_find_replace(db: ResultsDB) -> None:
    assert db.find("h1") is None
    first = db.save(make_record("h1"))
    assert isinstance(first, int)
    assert db.find("h1") == make_record("h1", created_at=db.find("h1").created_at)

    replaced = make_record("h1", metrics=[Metric("top1", 0.9, 450, "linear probe, base_test")], seed=3)
    db.save(replaced)
    records = db.records()
    assert records == [replaced]  # replaced in place: one record, old metrics gone
    with sqlite3.connect(db.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 1


def test_find_ignores_failed_runs_and_retry_replaces_them(db: ResultsDB) -> None:
    db.save(make_record("h1", status="failed"))
    assert db.find("h1") is None
    assert [r.status for r in db.records()] == ["failed"]
    assert db.records()[0].error == "loss is NaN" and db.records()[0].failed_step == 17
    db.save(make_record("h1"))
    assert db.find("h1") is not None
    assert [r.status for r in db.records()] == ["done"]


def test_round_trip_is_exact(db: ResultsDB) -> None:
    record = make_record("h1", role="reference", created_at="2024-05-01T12:00:00+00:00", failed_step=None)
    db.save(record)
    (stored,) = db.records()
    assert stored == record
    assert stored.metrics[0].value == 0.8312345678901234
    assert stored.metrics[0].ci95 is None
    assert stored.metrics[1].ci95 == 0.4321
    assert stored.metrics[1].extras == {"task": "fewshot", "shots": 5}
    assert stored.config == record.config
    assert record_from_dict(json.loads(json.dumps(record_to_dict(record)))) == record


def test_nan_metric_value_survives(db: ResultsDB) -> None:
    db.save(make_record("h1", metrics=[Metric("loss", math.nan, 1, "p", math.nan)]))
    (metric,) = db.records()[0].metrics
    assert math.isnan(metric.value) and metric.ci95 is None  # a NaN interval means "no interval"


def test_records_filter_by_suite_and_metrics_frame(db: ResultsDB) -> None:
    db.save(make_record("a", suite="s1"))
    db.save(make_record("b", suite="s2", seed=1))
    db.save(make_record("c", suite="s2", status="failed"))
    assert [r.config_hash for r in db.records("s2")] == ["b", "c"]
    assert len(db.records()) == 3

    frame = db.metrics_frame("s2")
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert len(frame) == 2  # the failed run has no metrics
    assert frame["metric"].tolist() == ["top1", "acc_5shot"]
    assert frame["task"].tolist() == ["top1", "fewshot"]
    assert frame["seed"].tolist() == [1, 1]
    assert frame["value"].tolist() == [0.8312345678901234, 71.25]
    assert db.metrics_frame("nope").empty


def test_invalid_status_or_role_is_a_user_error() -> None:
    with pytest.raises(BenchbaseError, match="status"):
        make_record("h", status="running")
    with pytest.raises(BenchbaseError, match="role"):
        make_record("h", role="baseline")


def _writer(path: str, worker: int) -> None:
    db = ResultsDB(path)
    for i in range(25):
        db.save(make_record(f"w{worker}-{i}", seed=i))
    for i in range(0, 25, 5):  # re-save some: replacement under contention
        db.save(make_record(f"w{worker}-{i}", seed=i, wall_time=99.0))


def test_concurrent_writers(tmp_path: Path) -> None:
    path = str(tmp_path / "results.db")  # created concurrently by the writers themselves
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    procs = [ctx.Process(target=_writer, args=(path, w)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 8

    records = ResultsDB(path).records()
    hashes = [r.config_hash for r in records]
    assert sorted(hashes) == sorted(f"w{w}-{i}" for w in range(8) for i in range(25))
    assert all(len(r.metrics) == 2 for r in records)
    assert {r.config_hash for r in records if r.wall_time == 99.0} == {
        f"w{w}-{i}" for w in range(8) for i in range(0, 25, 5)
    }
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 8 * 25 * 2


@pytest.mark.parametrize(
    "content",
    [bytes(range(256)) * 20, b"not a database\n", b"SQLite format 3\x00" + b"\x07" * 300],
    ids=["garbage", "text", "truncated"],
)
def test_not_a_database_is_refused_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "results.db"
    path.write_bytes(content)
    with pytest.raises(BenchbaseError) as info:
        ResultsDB(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "not a benchbase results database" in message and "db=" in message
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.db"]


def test_truncated_real_database_is_refused(tmp_path: Path) -> None:
    source = ResultsDB(tmp_path / "full.db")
    for i in range(30):
        source.save(make_record(f"h{i}", config={"pad": "x" * 5000}))
    with sqlite3.connect(source.path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = source.path.read_bytes()
    path = tmp_path / "results.db"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BenchbaseError, match="not a benchbase results database"):
        ResultsDB(path).records()
    assert path.read_bytes() == data[: len(data) // 2]


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    before = path.read_bytes()
    with pytest.raises(BenchbaseError, match="SQLite database but not a benchbase results database"):
        ResultsDB(path)
    assert path.read_bytes() == before


def test_export_import_jsonl(tmp_path: Path, db: ResultsDB) -> None:
    db.save(make_record("a", suite="s1"))
    db.save(make_record("b", suite="s2"))
    db.save(make_record("c", suite="s2", status="failed"))
    out = tmp_path / "export" / "s2.jsonl"
    assert db.export_jsonl(out, suite="s2") == 2
    assert [json.loads(line)["config_hash"] for line in out.read_text().splitlines()] == ["b", "c"]

    other = ResultsDB(tmp_path / "other.db")
    other.save(make_record("b", suite="s2", seed=7))  # already there: the import skips it
    assert other.import_jsonl(out) == (1, 1)
    assert other.find("b").seed == 7
    assert other.records("s2")[1] == db.records("s2")[1]
    assert other.import_jsonl(out) == (0, 2)  # idempotent

    all_out = tmp_path / "all.jsonl"
    assert db.export_jsonl(all_out) == 3
    fresh = ResultsDB(tmp_path / "fresh.db")
    assert fresh.import_jsonl(all_out) == (3, 0)
    assert fresh.records() == db.records()


def test_import_malformed_line_adds_nothing(tmp_path: Path, db: ResultsDB) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record_to_dict(make_record("a"))) + "\n" + '{"config_hash": "x"}\n')
    with pytest.raises(BenchbaseError, match=r"bad\.jsonl:2"):
        db.import_jsonl(path)
    assert db.records() == []


def test_older_schema_is_migrated_and_keeps_its_runs(tmp_path):
    from benchbase.results import _SCHEMA_VERSION

    path = tmp_path / "old.db"
    ResultsDB(path).save(make_record("kept"))
    with sqlite3.connect(path) as conn:  # turn the file into a schema-1 database holding a run
        conn.execute("DROP INDEX runs_suite_role_method")
        conn.execute("PRAGMA user_version = 1")
    db = ResultsDB(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == _SCHEMA_VERSION == 2
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert "runs_suite_role_method" in indexes
    assert [r.config_hash for r in db.records()] == ["kept"]

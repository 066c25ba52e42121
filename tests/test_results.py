"""The results database: save/find/supersede, exact round trips, concurrent writers, bad files, JSONL,
migrations."""

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


def test_save_find_supersede(db: ResultsDB) -> None:
    assert db.find("h1") is None
    first = db.save(make_record("h1", created_at="2024-05-01T12:00:00+00:00"))
    assert isinstance(first, int)
    assert db.find("h1") == make_record("h1", created_at="2024-05-01T12:00:00+00:00")

    newer = make_record("h1", metrics=[Metric("top1", 0.9, 450, "linear probe, base_test")], seed=3,
                        created_at="2024-06-01T12:00:00+00:00")
    db.save(newer)
    assert db.find("h1") == newer
    assert db.records() == [newer]  # the newer record supersedes the older one...
    history = db.records(superseded=True)
    assert [r.created_at[:7] for r in history] == ["2024-05", "2024-06"]  # ...which is still stored
    assert len(history[0].metrics) == 2 and len(history[1].metrics) == 1
    with sqlite3.connect(db.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 3

    db.save(make_record("h1", created_at="2024-01-01T00:00:00+00:00"))  # an older record saved later
    assert db.find("h1") == newer  # newest by created_at, not by insert order
    same_second = make_record("h1", created_at=newer.created_at, wall_time=1.0)
    db.save(same_second)
    assert db.find("h1") == same_second  # a tie goes to the later save
    assert len(db.records(superseded=True)) == 4


def test_find_ignores_failed_runs_and_retry_supersedes_them(db: ResultsDB) -> None:
    db.save(make_record("h1", status="failed", created_at="2024-05-01T12:00:00+00:00"))
    assert db.find("h1") is None
    assert [r.status for r in db.records()] == ["failed"]
    assert db.records()[0].error == "loss is NaN" and db.records()[0].failed_step == 17
    db.save(make_record("h1", created_at="2024-05-02T12:00:00+00:00"))
    assert db.find("h1") is not None
    assert [r.status for r in db.records()] == ["done"]
    assert [r.status for r in db.records(superseded=True)] == ["failed", "done"]
    db.save(make_record("h1", status="failed", created_at="2024-05-03T12:00:00+00:00"))  # a forced rerun failed
    assert db.find("h1") is None  # the current record failed: the config is retried


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
    for i in range(0, 25, 5):  # re-save some: superseding under contention
        db.save(make_record(f"w{worker}-{i}", seed=i, wall_time=99.0, created_at="2099-01-01T00:00:00+00:00"))


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
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 8 * 30 * 2
    assert len(ResultsDB(path).records(superseded=True)) == 8 * 30


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
    other.save(make_record("b", suite="s2", seed=7, created_at=db.find("b").created_at))  # already there
    other.save(make_record("c", suite="s2", seed=7, created_at="2000-01-01T00:00:00+00:00"))  # older
    assert other.import_jsonl(out) == (1, 1)
    assert other.find("b").seed == 7  # skipped: same config hash and time
    assert other.records("s2")[1] == db.records("s2")[1]  # the imported failed "c" supersedes the old one
    assert len(other.records("s2", superseded=True)) == 3
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
        assert conn.execute("PRAGMA user_version").fetchone()[0] == _SCHEMA_VERSION == 3
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert "runs_suite_role_method" in indexes
    assert [r.config_hash for r in db.records()] == ["kept"]


_V2_SCHEMA = (  # the schema of version 2, verbatim: config_hash UNIQUE, three roles
    """CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        config_hash TEXT NOT NULL UNIQUE,
        suite TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('teacher', 'reference', 'method')),
        method TEXT NOT NULL,
        teacher TEXT NOT NULL,
        student TEXT NOT NULL,
        dataset TEXT NOT NULL,
        seed INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
        error TEXT NOT NULL,
        failed_step INTEGER,
        config TEXT NOT NULL,
        git_rev TEXT NOT NULL,
        versions TEXT NOT NULL,
        device TEXT NOT NULL,
        wall_time REAL NOT NULL,
        created_at TEXT NOT NULL,
        run_dir TEXT NOT NULL
    )""",
    "CREATE INDEX runs_suite ON runs (suite)",
    """CREATE TABLE metrics (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value REAL,
        n INTEGER NOT NULL,
        ci95 REAL,
        protocol TEXT NOT NULL,
        extras TEXT NOT NULL
    )""",
    "CREATE INDEX metrics_run ON metrics (run_id)",
    "CREATE INDEX runs_suite_role_method ON runs (suite, role, method)",
)


def _v2_database(path: Path, records: list[RunRecord]) -> None:
    """A version-2 database file holding ``records``, written with the old schema."""
    from benchbase.results import _APPLICATION_ID

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    for statement in _V2_SCHEMA:
        conn.execute(statement)
    conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 2")
    for record in records:
        data = record_to_dict(record)
        run = {k: json.dumps(v, sort_keys=True) if k in ("config", "versions") else v
               for k, v in data.items() if k != "metrics"}
        run_id = conn.execute(f"INSERT INTO runs ({', '.join(run)}) VALUES ({', '.join('?' * len(run))})",
                              list(run.values())).lastrowid
        for m in record.metrics:
            conn.execute("INSERT INTO metrics (run_id, name, value, n, ci95, protocol, extras) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (run_id, m.name, m.value, m.n, m.ci95, m.protocol, json.dumps(m.extras, sort_keys=True)))
    with pytest.raises(sqlite3.IntegrityError):  # what version 3 lifts
        conn.execute("INSERT INTO runs SELECT NULL, config_hash, suite, 'floor', method, teacher, student, dataset, "
                     "seed, status, error, failed_step, config, git_rev, versions, device, wall_time, created_at, "
                     "run_dir FROM runs LIMIT 1")
    conn.close()


def test_v2_database_is_migrated_to_v3(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    old = [make_record("a", created_at="2024-05-01T12:00:00+00:00"),
           make_record("b", suite="s2", status="failed", role="reference", created_at="2024-05-02T12:00:00+00:00"),
           make_record("c", seed=2, created_at="2024-05-03T12:00:00+00:00")]
    _v2_database(path, old)

    db = ResultsDB(path)
    assert db.records() == old  # every run and metric survives, ids (insert order) kept
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 4
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs_suite", "runs_suite_role_method", "runs_config_hash", "metrics_run"} <= indexes
    assert tables == {"runs", "metrics"}

    newer = make_record("a", role="floor", created_at="2024-07-01T00:00:00+00:00")  # same hash, a new role
    db.save(newer)
    db.save(make_record("e", role="eval"))
    assert db.find("a") == newer
    assert [r.created_at[:7] for r in db.records(superseded=True) if r.config_hash == "a"] == ["2024-05", "2024-07"]
    with sqlite3.connect(path) as conn:  # deleting a run still cascades to its metrics
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM runs WHERE config_hash = 'c'")
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 6  # a, the newer a, e
    assert ResultsDB(path).find("c") is None  # reopening a current database migrates nothing


def test_schema_role_check_follows_roles() -> None:
    from benchbase.results import ROLES, _SCHEMA

    assert ROLES == ("teacher", "floor", "reference", "method", "eval")
    assert "CHECK (role IN ('teacher', 'floor', 'reference', 'method', 'eval'))" in _SCHEMA[0]

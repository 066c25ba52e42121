"""The results database: every run's record and metrics in one SQLite file.

Runs are keyed by the hash of their resolved config. Saving a record whose ``config_hash`` is
already stored (``--force`` reruns, retried failures) adds it next to the old one: the newer
record supersedes the older, which stays in the database. :meth:`ResultsDB.find` and
:meth:`ResultsDB.records` give the newest record per config hash (the one tables show);
``records(superseded=True)`` gives every record. Several processes may write at once (WAL journal, busy timeout), and every write is one
transaction, so a crash never leaves half a record behind. Leaderboards are built from this
database alone (:mod:`benchbase.leaderboard`); JSON lines move records between databases.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from benchbase.components import Metric
from benchbase.errors import BenchbaseError

STATUSES = ("done", "failed")
ROLES = ("teacher", "floor", "reference", "method", "eval")
"""A row's role: the teacher itself, a floor (what a student reaches without the teacher's
knowledge), a reference such as from-scratch training, a method, or an evaluation of a model."""

BUSY_TIMEOUT_S = 60.0
"""How long a write waits for another process's transaction before giving up."""

_SQLITE_MAGIC = b"SQLite format 3\x00"
_FIX = "move it away or pass db=<another path>"
_APPLICATION_ID = 0x62626462  # "bbdb": marks the file as a benchbase results database
_SCHEMA_VERSION = 3


def _runs_table(name: str) -> str:
    """The current definition of the ``runs`` table, created as ``name``."""
    roles = ", ".join(f"'{role}'" for role in ROLES)
    statuses = ", ".join(f"'{status}'" for status in STATUSES)
    return f"""CREATE TABLE {name} (
        id INTEGER PRIMARY KEY,
        config_hash TEXT NOT NULL,
        suite TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ({roles})),
        method TEXT NOT NULL,
        teacher TEXT NOT NULL,
        student TEXT NOT NULL,
        dataset TEXT NOT NULL,
        seed INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ({statuses})),
        error TEXT NOT NULL,
        failed_step INTEGER,
        config TEXT NOT NULL,  -- JSON
        git_rev TEXT NOT NULL,
        versions TEXT NOT NULL,  -- JSON
        device TEXT NOT NULL,
        wall_time REAL NOT NULL,
        created_at TEXT NOT NULL,
        run_dir TEXT NOT NULL
    )"""


_RUNS_INDEXES = (
    "CREATE INDEX runs_suite ON runs (suite)",
    "CREATE INDEX runs_suite_role_method ON runs (suite, role, method)",
    "CREATE INDEX runs_config_hash ON runs (config_hash)",
)
_RUN_COLUMNS = (
    "config_hash", "suite", "role", "method", "teacher", "student", "dataset", "seed", "status",
    "error", "failed_step", "config", "git_rev", "versions", "device", "wall_time", "created_at",
    "run_dir",
)
_REBUILD_RUNS = (
    # SQLite's procedure for changing a table's constraints: new table, copy, drop, rename, indexes.
    # It runs with foreign keys off (see _init_schema), so dropping the old table keeps the metrics.
    _runs_table("runs_new"),
    f"INSERT INTO runs_new (id, {', '.join(_RUN_COLUMNS)}) SELECT id, {', '.join(_RUN_COLUMNS)} FROM runs",
    "DROP TABLE runs",
    "ALTER TABLE runs_new RENAME TO runs",
    *_RUNS_INDEXES,
)
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # version -> statements that bring a database of that version to the next one
    1: ("CREATE INDEX runs_suite_role_method ON runs (suite, role, method)",),
    2: _REBUILD_RUNS,  # config_hash no longer UNIQUE (superseded records stay), roles from ROLES
}
_SCHEMA = (
    _runs_table("runs"),
    *_RUNS_INDEXES,
    """CREATE TABLE metrics (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value REAL,  -- NULL holds NaN, which SQLite cannot store
        n INTEGER NOT NULL,
        ci95 REAL,
        protocol TEXT NOT NULL,
        extras TEXT NOT NULL  -- JSON
    )""",
    "CREATE INDEX metrics_run ON metrics (run_id)",
)
_JSON_RUN_COLUMNS = ("config", "versions")
_METRIC_COLUMNS = ("name", "value", "n", "ci95", "protocol", "extras")
_SELECT = (
    f"SELECT r.id, {', '.join('r.' + c for c in _RUN_COLUMNS)}, "
    f"{', '.join('m.' + c for c in _METRIC_COLUMNS)} "
    "FROM runs r LEFT JOIN metrics m ON m.run_id = r.id"
)
_NEWEST = (
    # the record no other record of its config hash supersedes (later created_at; on a tie, later insert)
    "NOT EXISTS (SELECT 1 FROM runs n WHERE n.config_hash = r.config_hash AND "
    "(n.created_at > r.created_at OR (n.created_at = r.created_at AND n.id > r.id)))"
)
_FRAME_RUN_COLUMNS = tuple(c for c in _RUN_COLUMNS if c not in _JSON_RUN_COLUMNS)
FRAME_COLUMNS = (*_FRAME_RUN_COLUMNS, "metric", "task", "value", "n", "ci95", "protocol", "extras")
"""Columns of :meth:`ResultsDB.metrics_frame`: the run's scalar fields, then the metric's."""


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunRecord:
    """Everything stored about one run: what ran, how it ended, what it measured and where.

    ``config`` is the full resolved config and ``config_hash`` its hash (the record's key).
    ``status`` is ``"done"`` or ``"failed"``; a failed run keeps its ``error`` and the step it
    failed at. ``role`` is one of :data:`ROLES`: ``"method"`` for a distillation method,
    ``"teacher"`` for the teacher's own row, ``"reference"`` for baselines such as from-scratch
    training.
    ``versions`` maps package and plugin names to versions; ``created_at`` is ISO 8601 UTC.
    """

    config_hash: str
    suite: str
    method: str
    teacher: str
    student: str
    dataset: str
    seed: int
    status: str
    metrics: list[Metric]
    config: dict[str, Any]
    error: str = ""
    failed_step: int | None = None
    git_rev: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    device: str = ""
    wall_time: float = 0.0
    created_at: str = field(default_factory=_utc_now)
    run_dir: str = ""
    role: str = "method"

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise BenchbaseError(
                f"run {self.config_hash}: status {self.status!r} is not one of {', '.join(STATUSES)}"
            )
        if self.role not in ROLES:
            raise BenchbaseError(f"run {self.config_hash}: role {self.role!r} is not one of {', '.join(ROLES)}")


def record_to_dict(record: RunRecord) -> dict[str, Any]:
    """The record as plain JSON-ready data (metrics as dicts)."""
    return asdict(record)


def record_from_dict(data: Mapping[str, Any]) -> RunRecord:
    """The inverse of :func:`record_to_dict`; raises :class:`BenchbaseError` on a malformed record."""
    try:
        metrics = [Metric(**m) for m in data["metrics"]]
        return RunRecord(**{**data, "metrics": metrics})
    except (KeyError, TypeError) as exc:
        raise BenchbaseError(f"malformed run record ({type(exc).__name__}: {exc})") from exc


def records_frame(records: Iterable[RunRecord]) -> pd.DataFrame:
    """One row per metric of ``records`` with its run's fields (:data:`FRAME_COLUMNS`).

    ``task`` is ``extras["task"]`` where the evaluator set it. Runs without metrics (failed
    runs) have no rows.
    """
    rows = [
        {
            **{c: getattr(rec, c) for c in _FRAME_RUN_COLUMNS},
            "metric": m.name,
            "task": m.extras.get("task", ""),
            "value": m.value,
            "n": m.n,
            "ci95": m.ci95,
            "protocol": m.protocol,
            "extras": m.extras,
        }
        for rec in records
        for m in rec.metrics
    ]
    return pd.DataFrame(rows, columns=list(FRAME_COLUMNS))


def write_jsonl(path: Path, records: Sequence[RunRecord]) -> None:
    """Records as JSON lines (one run per line, keys sorted), written atomically."""
    write_text_atomic(path, "".join(json.dumps(record_to_dict(r), sort_keys=True) + "\n" for r in records))


def read_jsonl(path: Path) -> list[RunRecord]:
    """Records from a JSON-lines file; a malformed line is a one-line error naming file and line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BenchbaseError(f"cannot read {path}: {exc.strerror}") from exc
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(record_from_dict(json.loads(line)))
        except (json.JSONDecodeError, BenchbaseError) as exc:
            raise BenchbaseError(f"{path}:{lineno}: not a benchbase run record ({exc})") from exc
    return records


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class ResultsDB:
    """The SQLite results database at ``path``, created (with its parent folders) on first use.

    Each operation opens its own connection, so one instance may be used from several processes
    and any number of processes may open the same file. A file that is not a benchbase results
    database raises :class:`BenchbaseError` and is never modified.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._check_header()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._init_schema()

    def __repr__(self) -> str:
        return f"ResultsDB({str(self.path)!r})"

    # -- public API ------------------------------------------------------------------------

    def find(self, config_hash: str) -> RunRecord | None:
        """The newest stored record with this config hash if it is *done* (for reuse), else None.

        A newer failed record (a ``--force`` rerun that failed) means the config is retried, as the
        tables show it failed.
        """
        found = self._query(f"{_SELECT} WHERE r.config_hash = ? AND {_NEWEST}", (config_hash,))
        return found[0] if found and found[0].status == "done" else None

    def save(self, record: RunRecord) -> int:
        """Store ``record`` and return its row id.

        A stored record with the same config hash stays in the database, superseded by ``record``
        when that is newer (see :meth:`records`).
        """
        with self._write() as conn:
            return self._insert(conn, record)

    def records(self, suite: str | None = None, *, superseded: bool = False) -> list[RunRecord]:
        """The stored records (of one suite if given), oldest insert first.

        One record per config hash, the newest (latest ``created_at``; on a tie, the later save),
        unless ``superseded``: then every record, the older ones of a config hash included.
        """
        where = [] if superseded else [_NEWEST]
        params: tuple[str, ...] = ()
        if suite is not None:
            where.append("r.suite = ?")
            params = (suite,)
        return self._query(f"{_SELECT} WHERE {' AND '.join(where)}" if where else _SELECT, params)

    def metrics_frame(self, suite: str | None = None) -> pd.DataFrame:
        """One row per stored metric with its run's fields (:func:`records_frame` of :meth:`records`)."""
        return records_frame(self.records(suite))

    def export_jsonl(self, path: str | os.PathLike[str], suite: str | None = None) -> int:
        """Write every record (of one suite if given, superseded ones included) as JSON lines;
        returns how many."""
        records = self.records(suite, superseded=True)
        write_jsonl(Path(path), records)
        return len(records)

    def import_jsonl(self, path: str | os.PathLike[str]) -> tuple[int, int]:
        """Add the records in a JSON-lines file; returns (added, skipped).

        A record already stored (same config hash and ``created_at``, or earlier in the file) is
        skipped; a record of a stored config hash made at another time is added, and the newer of
        the two supersedes the other. The import is one transaction: a malformed line adds nothing.
        """
        records = read_jsonl(Path(path))
        added = 0
        with self._write() as conn:
            for record in records:
                if conn.execute("SELECT 1 FROM runs WHERE config_hash = ? AND created_at = ?",
                                (record.config_hash, record.created_at)).fetchone():
                    continue
                self._insert(conn, record)
                added += 1
        return added, len(records) - added

    # -- internals -------------------------------------------------------------------------

    def _check_header(self) -> None:
        """Refuse a non-empty file that does not start like a SQLite database, before opening it."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            return
        except IsADirectoryError as exc:
            raise BenchbaseError(f"results database {self.path} is a directory; pass db=<a file path>") from exc
        if head and head != _SQLITE_MAGIC:
            raise BenchbaseError(
                f"{self.path} is not a benchbase results database (file is not a database); {_FIX}"
            )

    def _init_schema(self) -> None:
        """Check the file's marker, switch to WAL and create the schema in a new file (or migrate
        an older one)."""
        with self._connect() as conn:
            self._is_new(conn)  # refuse a foreign database before anything is written to it
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            # off for this connection (it has no effect inside a transaction): a migration that
            # rebuilds `runs` drops the old table, which must not cascade to the metrics
            conn.execute("PRAGMA foreign_keys = OFF")
            conn.execute("BEGIN IMMEDIATE")
            with conn:
                if self._is_new(conn):  # decided again under the write lock: others may create it too
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
                else:
                    self._migrate(conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring an older schema up to date in the open transaction; the stored runs are kept."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == _SCHEMA_VERSION:
            return
        while version < _SCHEMA_VERSION:
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
            version += 1
            conn.execute(f"PRAGMA user_version = {version}")
        if conn.execute("PRAGMA foreign_key_check").fetchone():  # raising rolls the migration back
            raise BenchbaseError(f"results database {self.path}: a migration left metrics without their run; {_FIX}")

    def _is_new(self, conn: sqlite3.Connection) -> bool:
        """True for an empty database, False for a benchbase one; raises for anything else."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if app_id == 0 and not conn.execute("SELECT 1 FROM sqlite_master").fetchone():
            return True
        if app_id != _APPLICATION_ID:
            raise BenchbaseError(f"{self.path} is a SQLite database but not a benchbase results database; {_FIX}")
        if version > _SCHEMA_VERSION:
            raise BenchbaseError(
                f"results database {self.path} has schema version {version}, newer than this "
                f"benchbase understands ({_SCHEMA_VERSION}); upgrade benchbase or pass db=<another path>"
            )
        return False

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode (transactions are explicit); SQLite errors become one line."""
        conn = None
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute("PRAGMA foreign_keys = ON")
            # WAL + NORMAL: no crash corrupts the file or splits a transaction; after an OS crash
            # or power loss the last few commits may be missing (those runs are simply rerun).
            conn.execute("PRAGMA synchronous = NORMAL")
            yield conn
        except sqlite3.DatabaseError as exc:
            error = self._user_error(exc)
            if error is None:
                raise
            raise error from exc
        finally:
            if conn is not None:
                conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one write transaction: committed on success, rolled back on error."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now, waiting up to the busy timeout
            with conn:
                yield conn

    def _user_error(self, exc: sqlite3.DatabaseError) -> BenchbaseError | None:
        """The one-line error for a broken, locked or unopenable file; None for anything else."""
        message = str(exc)
        if "file is not a database" in message or "malformed" in message:
            return BenchbaseError(f"{self.path} is not a benchbase results database ({message}); {_FIX}")
        if "locked" in message or "busy" in message:
            return BenchbaseError(
                f"results database {self.path} stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s; "
                "retry when it finishes"
            )
        if "unable to open" in message or "readonly" in message:
            return BenchbaseError(
                f"cannot write results database {self.path} ({message}); check the folder's "
                "permissions or pass db=<another path>"
            )
        return None

    def _insert(self, conn: sqlite3.Connection, record: RunRecord) -> int:
        values = [getattr(record, c) for c in _RUN_COLUMNS]
        for c in _JSON_RUN_COLUMNS:
            values[_RUN_COLUMNS.index(c)] = json.dumps(getattr(record, c), sort_keys=True)
        cursor = conn.execute(
            f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES ({', '.join('?' * len(_RUN_COLUMNS))})",
            values,
        )
        run_id = cursor.lastrowid
        assert run_id is not None
        conn.executemany(
            f"INSERT INTO metrics (run_id, {', '.join(_METRIC_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (run_id, m.name, m.value, m.n, _none_if_nan(m.ci95), m.protocol, json.dumps(m.extras, sort_keys=True))
                for m in record.metrics
            ],
        )
        return run_id

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[RunRecord]:
        """Records from a ``_SELECT`` query (one statement, hence one consistent snapshot)."""
        with self._connect() as conn:
            rows = conn.execute(f"{sql} ORDER BY r.id, m.id", params).fetchall()
        records: dict[int, RunRecord] = {}
        n_run = 1 + len(_RUN_COLUMNS)
        for row in rows:
            record = records.get(row[0])
            if record is None:
                run = dict(zip(_RUN_COLUMNS, row[1:n_run]))
                for c in _JSON_RUN_COLUMNS:
                    run[c] = json.loads(run[c])
                record = records[row[0]] = RunRecord(**run, metrics=[])
            name, value, n, ci95, protocol, extras = row[n_run:]
            if name is not None:  # LEFT JOIN row of a run without metrics
                value = math.nan if value is None else value
                record.metrics.append(Metric(name, value, n, protocol, ci95, json.loads(extras)))
        return list(records.values())


def _none_if_nan(x: float | None) -> float | None:
    """SQLite stores NaN as NULL anyway; a NaN interval reads back as None (no interval)."""
    return None if x is None or math.isnan(x) else x

"""SQLite manifest. Every change is one transaction (`BEGIN IMMEDIATE`), so a crash leaves the last
committed state and concurrent writers serialise instead of losing each other's commits. Blobs are
always written (atomically) before the transaction that references them."""
from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mupath.errors import StoreError
from mupath.store.faults import crash_point
from mupath.store.log import CommitRecord
from mupath.store.records import CheckRecord, ComponentRecord, PathRecord, TaskRecord

FORMAT_VERSION = 1
MANIFEST_COMMIT = "manifest-commit"   #: crash point just before a transaction's COMMIT (mupath.store.faults)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    name TEXT PRIMARY KEY, position INTEGER NOT NULL, data_blob TEXT NOT NULL,
    class_names TEXT NOT NULL, image_shape TEXT NOT NULL, source TEXT NOT NULL,
    sizes TEXT NOT NULL, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS components (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, slot TEXT NOT NULL, config TEXT NOT NULL,
    blob TEXT NOT NULL, num_params INTEGER NOT NULL, task TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS paths (
    id TEXT PRIMARY KEY, task TEXT NOT NULL, parent_id TEXT, components TEXT NOT NULL,
    hparams TEXT NOT NULL, quality REAL, metrics TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS retained (task TEXT PRIMARY KEY, path_id TEXT NOT NULL, commit_id INTEGER);
CREATE TABLE IF NOT EXISTS offspring (
    path_id TEXT NOT NULL, task TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (path_id, task));
CREATE TABLE IF NOT EXISTS commits (
    id INTEGER PRIMARY KEY AUTOINCREMENT, task TEXT NOT NULL, path_id TEXT NOT NULL,
    run_id TEXT, iteration INTEGER, time REAL NOT NULL, test_accuracy REAL, info TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checks (
    task TEXT PRIMARY KEY, commit_id INTEGER NOT NULL, logits_blob TEXT NOT NULL,
    test_accuracy REAL NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, settings TEXT NOT NULL, status TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL);
"""


class Manifest:
    """Typed access to the manifest database of one store."""

    def __init__(self, path: Path, *, create: bool = False, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if not create and not self.path.exists():
            raise StoreError(f"no store manifest at {self.path}; create one with `mupath init`")
        try:
            if read_only:        # SQLite's own read-only mode: no write, no write lock, no journal;
            # a reader (the server) may read from its worker threads: it serialises its own reads
                self.db = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=120.0,
                                          isolation_level=None, check_same_thread=False)
            else:
                self.db = sqlite3.connect(str(self.path), timeout=120.0, isolation_level=None)
                self.db.execute("PRAGMA journal_mode=DELETE")
                self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=OFF")
            if create:
                self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"manifest {self.path} is unreadable ({exc}); restore it from a backup") from None
        if not create:
            self._check_version()

    def close(self) -> None:
        self.db.close()

    def _check_version(self) -> None:
        try:
            version = self.get_meta("format_version")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"manifest {self.path} is unreadable ({exc}); restore it from a backup") from None
        if version is None:
            raise StoreError(f"{self.path} is not a mupath manifest (no format version)")
        if not version.strip().isdigit():
            raise StoreError(f"{self.path} has a damaged format version ({version!r}); restore the manifest "
                             "from a backup")
        if int(version) > FORMAT_VERSION:
            raise StoreError(f"store format {version} is newer than this mupath supports ({FORMAT_VERSION}); "
                             "upgrade mupath")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic, serialised write: all of it lands or none of it does. A failing write (full
        disk, read-only store, locked database) rolls back and raises a one-line StoreError."""
        if self.read_only:
            raise StoreError(f"the store at {self.path.parent} is open read-only; open it writable to change it")
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._write_error(exc) from None
        try:
            yield self.db
            crash_point(MANIFEST_COMMIT)
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise self._write_error(exc) from None
        except BaseException:
            self._rollback()
            raise

    @contextlib.contextmanager
    def read_transaction(self) -> Iterator[sqlite3.Connection]:
        """Reads that see one committed state: SQLite holds a shared lock from the first read to the
        end, so a concurrent commit lands entirely before or entirely after them. Never writes."""
        try:
            self.db.execute("BEGIN DEFERRED")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the manifest {self.path} ({exc}); run `mupath verify`") from None
        try:
            yield self.db
        finally:
            self._rollback()          # nothing was written: ending the read is all it does

    def _rollback(self) -> None:
        if self.db.in_transaction:          # SQLite may already have rolled back (e.g. disk full)
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")

    def _write_error(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "full" in text.lower():
            return StoreError(f"no space left on the device holding {self.path.parent}; free some space and "
                              "run the same command again (the store is unchanged)")
        if "readonly" in text.lower() or "read-only" in text.lower() or "unable to open" in text.lower():
            return StoreError(f"cannot write the manifest {self.path} ({text}); make the store writable and "
                              "run the same command again (the store is unchanged)")
        return StoreError(f"cannot write the manifest {self.path} ({text}); check that the store is "
                          "writable and not held by another process (the store is unchanged)")

    # ---- meta -------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, con: sqlite3.Connection, key: str, value: str) -> None:
        con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # ---- tasks ------------------------------------------------------------------------------
    def add_task(self, con: sqlite3.Connection, rec: TaskRecord) -> None:
        con.execute("INSERT INTO tasks VALUES (?,?,?,?,?,?,?,?)",
                    (rec.name, rec.position, rec.data_blob, json.dumps(list(rec.class_names)),
                     json.dumps(list(rec.image_shape)), rec.source, json.dumps(rec.sizes), time.time()))

    def tasks(self) -> list[TaskRecord]:
        rows = self.db.execute("SELECT name, position, data_blob, class_names, image_shape, source, sizes "
                               "FROM tasks ORDER BY position").fetchall()
        return [TaskRecord(r[0], r[1], r[2], tuple(json.loads(r[3])), tuple(json.loads(r[4])), r[5],
                           json.loads(r[6])) for r in rows]

    # ---- components -------------------------------------------------------------------------
    def add_component(self, con: sqlite3.Connection, rec: ComponentRecord) -> None:
        con.execute("INSERT OR IGNORE INTO components VALUES (?,?,?,?,?,?,?,?)",
                    (rec.id, rec.kind, rec.slot, json.dumps(rec.config), rec.blob, rec.num_params,
                     rec.task, time.time()))

    def components(self) -> dict[str, ComponentRecord]:
        rows = self.db.execute("SELECT id, kind, slot, config, blob, num_params, task FROM components")
        return {r[0]: ComponentRecord(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6]) for r in rows}

    # ---- paths ------------------------------------------------------------------------------
    def add_path(self, con: sqlite3.Connection, rec: PathRecord) -> None:
        con.execute("INSERT OR REPLACE INTO paths VALUES (?,?,?,?,?,?,?,?)",
                    (rec.id, rec.task, rec.parent_id, json.dumps(rec.components), json.dumps(rec.hparams),
                     rec.quality, json.dumps(rec.metrics), time.time()))

    def path_from_row(self, r: tuple[Any, ...]) -> PathRecord:
        return PathRecord(r[0], r[1], r[2], json.loads(r[3]), json.loads(r[4]),
                          float("-inf") if r[5] is None else r[5], json.loads(r[6]))

    def get_path(self, path_id: str) -> PathRecord | None:
        row = self.db.execute("SELECT id, task, parent_id, components, hparams, quality, metrics "
                              "FROM paths WHERE id=?", (path_id,)).fetchone()
        return None if row is None else self.path_from_row(row)

    def retained(self) -> dict[str, PathRecord]:
        """The best path of every task (and of the root pseudo-task)."""
        rows = self.db.execute(
            "SELECT p.id, p.task, p.parent_id, p.components, p.hparams, p.quality, p.metrics "
            "FROM retained r JOIN paths p ON p.id = r.path_id").fetchall()
        return {r[1]: self.path_from_row(r) for r in rows}

    def set_retained(self, con: sqlite3.Connection, task: str, path_id: str, commit_id: int | None) -> None:
        con.execute("INSERT OR REPLACE INTO retained VALUES (?,?,?)", (task, path_id, commit_id))

    # ---- offspring counters (µ2Net PPDecay) -------------------------------------------------
    def offspring(self) -> dict[tuple[str, str], int]:
        return {(r[0], r[1]): r[2] for r in self.db.execute("SELECT path_id, task, count FROM offspring")}

    def add_offspring(self, con: sqlite3.Connection, counts: dict[tuple[str, str], int]) -> None:
        for (path_id, task), n in counts.items():
            con.execute("INSERT INTO offspring VALUES (?,?,?) ON CONFLICT(path_id, task) "
                        "DO UPDATE SET count = count + excluded.count", (path_id, task, n))

    # ---- commits and immutability references -----------------------------------------------
    def add_commit(self, con: sqlite3.Connection, task: str, path_id: str, *, run_id: str | None,
                   iteration: int | None, test_accuracy: float | None, info: dict[str, Any]) -> int:
        cur = con.execute("INSERT INTO commits(task, path_id, run_id, iteration, time, test_accuracy, info) "
                          "VALUES (?,?,?,?,?,?,?)",
                          (task, path_id, run_id, iteration, time.time(), test_accuracy, json.dumps(info)))
        return int(cur.lastrowid or 0)

    def commits(self, run_id: str | None = None, task: str | None = None) -> list[dict[str, Any]]:
        """Commits in order, optionally of one run and/or one task (filtered in SQL: `info` can be large)."""
        query = "SELECT id, task, path_id, run_id, iteration, time, test_accuracy, info FROM commits"
        where = [(col, val) for col, val in (("run_id", run_id), ("task", task)) if val is not None]
        if where:
            query += " WHERE " + " AND ".join(f"{col}=?" for col, _ in where)
        args = tuple(val for _, val in where)
        rows = self.db.execute(query + " ORDER BY id", args).fetchall()
        keys = ("id", "task", "path_id", "run_id", "iteration", "time", "test_accuracy", "info")
        return [dict(zip(keys, r[:7] + (json.loads(r[7]),))) for r in rows]

    def last_commit_id(self) -> int:
        """The newest commit's id (0 before the first): readers poll it to notice a new commit."""
        row = self.db.execute("SELECT MAX(id) FROM commits").fetchone()
        return int(row[0] or 0)

    def commit_records(self, run_id: str | None = None, task: str | None = None) -> list[CommitRecord]:
        """`commits`, typed: the search log as records (mupath.store.log)."""
        return [CommitRecord.from_row(row) for row in self.commits(run_id, task)]

    def set_check(self, con: sqlite3.Connection, rec: CheckRecord) -> None:
        con.execute("INSERT OR REPLACE INTO checks VALUES (?,?,?,?)",
                    (rec.task, rec.commit_id, rec.logits_blob, rec.test_accuracy))

    def checks(self) -> dict[str, CheckRecord]:
        rows = self.db.execute("SELECT task, commit_id, logits_blob, test_accuracy FROM checks")
        return {r[0]: CheckRecord(*r) for r in rows}

    # ---- runs (resumption) ------------------------------------------------------------------
    def run_keys(self) -> dict[str, dict[str, Any]]:
        """{run id: its resume key (the settings and tasks it was started with)} of every recorded run."""
        return {r[0]: json.loads(r[1]) for r in self.db.execute("SELECT id, settings FROM runs ORDER BY created_at")}

    def find_run(self, settings_json: str) -> str | None:
        row = self.db.execute("SELECT id FROM runs WHERE settings=? AND status='running' "
                              "ORDER BY created_at DESC", (settings_json,)).fetchone()
        return None if row is None else row[0]

    def start_run(self, con: sqlite3.Connection, run_id: str, settings_json: str) -> None:
        now = time.time()
        con.execute("INSERT INTO runs VALUES (?,?,?,?,?)", (run_id, settings_json, "running", now, now))

    def finish_run(self, con: sqlite3.Connection, run_id: str, status: str = "done") -> None:
        con.execute("UPDATE runs SET status=?, updated_at=? WHERE id=?", (status, time.time(), run_id))

    # ---- garbage collection -----------------------------------------------------------------
    def delete_unused_components(self, con: sqlite3.Connection) -> int:
        """Drop components no retained path uses (their owners replaced them)."""
        used: set[str] = set()
        for (comps,) in con.execute("SELECT p.components FROM retained r JOIN paths p ON p.id=r.path_id"):
            used.update(json.loads(comps).values())
        ids = [r[0] for r in con.execute("SELECT id FROM components")]
        dead = [i for i in ids if i not in used]
        con.executemany("DELETE FROM components WHERE id=?", [(i,) for i in dead])
        return len(dead)

    def referenced_blobs(self) -> set[str]:
        refs = {r[0] for r in self.db.execute("SELECT blob FROM components")}
        refs |= {r[0] for r in self.db.execute("SELECT data_blob FROM tasks")}
        refs |= {r[0] for r in self.db.execute("SELECT logits_blob FROM checks")}
        return refs

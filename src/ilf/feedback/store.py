"""The feedback store: one SQLite file holding a collection of feedback.

It holds the tasks to annotate and their failing samples (up to 10 per task, the paper's
protocol), the annotators (per-person tokens, stored as SHA-256 hashes), their browser sessions,
task leases, and every feedback/refinement record whatever its source (human, llm, trace,
authors), plus "none is easy to fix" skips.

Durability: WAL journal, `synchronous=FULL` (a commit survives a crash of the app or the
machine), a busy timeout so concurrent writers queue instead of failing, and exactly one
`BEGIN IMMEDIATE` transaction per submission. A submission carries a client-generated
`submission_id` (UNIQUE): a POST retried after a lost response finds its row and is stored once.

    store = FeedbackStore("feedback.db")
    store.add_failing(results, tasks)      # results records from `ilf evaluate`
    token = store.add_annotator("alice")   # printed once, only its hash is kept
    store.export("feedback.jsonl")         # feedback records (docs/feedback.md)
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from ilf.errors import IlfError
from ilf.jsonl import write_jsonl

# The paper's annotators saw up to 10 failing samples of a task (Appendix A.2).
MAX_SAMPLES_PER_TASK = 10
# A task shown to an annotator stays reserved for them this long without a submission.
LEASE_SECONDS = 30 * 60
# Writers wait this long for the database lock before giving up (many annotators, one file).
BUSY_TIMEOUT_MS = 30_000
SOURCES = ("human", "llm", "trace", "authors")

# Columns of a feedback record; any other key of an imported record is kept in `meta` and
# restored on export, so imports are lossless.
RECORD_FIELDS = (
    "task_id",
    "sample_id",
    "program",
    "feedback",
    "refinement",
    "source",
    "author",
    "created_at",
    "feedback_id",
    "edit_distance",
    "passed",
    "status",
    "error",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    task_key TEXT PRIMARY KEY,          -- json.dumps(task_id): keeps 11 and "HumanEval/3" apart
    position INTEGER NOT NULL,
    record TEXT NOT NULL                -- the Task record as JSON
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    task_key TEXT NOT NULL REFERENCES tasks(task_key),
    sample_key TEXT NOT NULL,           -- json.dumps(sample_id)
    program TEXT NOT NULL,
    status TEXT, error TEXT, failed_test TEXT,
    record TEXT NOT NULL,
    UNIQUE (task_key, sample_key)
);
CREATE TABLE IF NOT EXISTS annotators (
    id INTEGER PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    token_hash TEXT UNIQUE NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash TEXT PRIMARY KEY,
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    csrf TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    task_key TEXT NOT NULL,
    annotator_id INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (task_key, annotator_id)
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    feedback_id TEXT UNIQUE NOT NULL,
    submission_id TEXT UNIQUE,          -- client-generated: a retried POST is stored once
    kind TEXT NOT NULL CHECK (kind IN ('feedback', 'skip')),
    task_key TEXT NOT NULL,
    sample_key TEXT,
    program TEXT, feedback TEXT, refinement TEXT,
    source TEXT NOT NULL, author TEXT, annotator_id INTEGER,
    created_at TEXT, edit_distance REAL, passed INTEGER, status TEXT, error TEXT,
    meta TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS one_per_annotator_task ON feedback (annotator_id, task_key)
    WHERE annotator_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS feedback_task ON feedback (task_key);
CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, verdict TEXT NOT NULL);
"""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def hash_secret(secret: str) -> str:
    # Tokens are 256-bit random values, so a fast hash is enough (no password stretching needed).
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def key(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@dataclass
class Annotator:
    id: int
    name: str


@dataclass
class Session:
    annotator: Annotator
    csrf: str


@dataclass
class Sample:
    id: int  # store row id (what forms refer to)
    sample_id: Any
    program: str
    status: str | None
    error: str | None
    failed_test: str | None
    record: dict


@dataclass
class AddReport:
    tasks: int  # tasks added (new)
    samples: int  # failing samples added (new)
    failing_tasks: int  # tasks with at least one failing sample in the input
    passing_results: int  # results skipped because they passed


class AlreadyAnnotated(IlfError):
    """The annotator already submitted feedback (or a skip) for this task."""


class FeedbackStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        try:
            self._conn().executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise IlfError(f"{self.path}: not a feedback store ({e})") from None

    # -- connections and transactions ---------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """One connection per thread (the web server answers from a thread pool)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    class _Tx:
        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            # IMMEDIATE takes the write lock up front: no deadlock upgrading a read to a write.
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, *_):
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def tx(self) -> "FeedbackStore._Tx":
        return self._Tx(self._conn())

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- tasks and failing samples --------------------------------------------------------------

    def add_failing(
        self,
        results: Iterable[Mapping[str, Any]],
        tasks: Any,
        max_samples: int = MAX_SAMPLES_PER_TASK,
    ) -> AddReport:
        """Add the failing samples of EVAL results (records of `ilf evaluate`) and their tasks.

        `tasks`: a TaskSet, or a mapping task_id -> Task. Up to `max_samples` distinct programs
        per task are kept, in input order. Adding the same results again adds nothing."""
        lookup = tasks.get if hasattr(tasks, "get") else dict(tasks).get
        by_task: dict[Any, list[Mapping[str, Any]]] = {}
        passing = 0
        for i, rec in enumerate(results):
            if "task_id" not in rec:
                raise IlfError(f"results record {i + 1}: missing field 'task_id'")
            if rec.get("passed") is True:
                passing += 1
                continue
            by_task.setdefault(rec["task_id"], []).append(rec)
        missing = [t for t in by_task if lookup(t) is None]
        if missing:
            raise IlfError(
                f"{len(missing)} task(s) of the results are not in the loaded tasks (e.g. {missing[0]!r}); "
                "pass the dataset the results were sampled from (--dataset / --tasks-file)"
            )
        new_tasks = new_samples = 0
        with self.tx() as c:
            pos = c.execute("SELECT COALESCE(MAX(position), -1) FROM tasks").fetchone()[0]
            for task_id, recs in by_task.items():
                task = lookup(task_id)
                tk = key(task.task_id)
                if c.execute("INSERT OR IGNORE INTO tasks VALUES (?, ?, ?)", (tk, pos + 1, key(task.to_record()))).rowcount:
                    pos += 1
                    new_tasks += 1
                seen = {r[0] for r in c.execute("SELECT program FROM samples WHERE task_key = ?", (tk,))}
                for i, rec in enumerate(recs):
                    if len(seen) >= max_samples:
                        break
                    program = rec.get("program")
                    if not isinstance(program, str):
                        program = task.prompt + str(rec.get("completion", ""))
                    if program in seen:  # identical programs would only cost the annotator time
                        continue
                    sid = rec.get("sample_id", i)
                    cur = c.execute(
                        "INSERT OR IGNORE INTO samples (task_key, sample_key, program, status, error, failed_test, record)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (tk, key(sid), program, rec.get("status"), rec.get("error"), rec.get("failed_test"), key(dict(rec))),
                    )
                    if cur.rowcount:
                        new_samples += 1
                        seen.add(program)
        return AddReport(new_tasks, new_samples, len(by_task), passing)

    def task(self, task_key: str) -> dict | None:
        row = self._conn().execute("SELECT record FROM tasks WHERE task_key = ?", (task_key,)).fetchone()
        return json.loads(row[0]) if row else None

    def samples(self, task_key: str) -> list[Sample]:
        rows = self._conn().execute("SELECT * FROM samples WHERE task_key = ? ORDER BY id", (task_key,)).fetchall()
        return [
            Sample(r["id"], json.loads(r["sample_key"]), r["program"], r["status"], r["error"], r["failed_test"], json.loads(r["record"]))
            for r in rows
        ]

    def sample(self, sample_pk: int) -> tuple[str, Sample] | None:
        r = self._conn().execute("SELECT * FROM samples WHERE id = ?", (sample_pk,)).fetchone()
        if r is None:
            return None
        s = Sample(r["id"], json.loads(r["sample_key"]), r["program"], r["status"], r["error"], r["failed_test"], json.loads(r["record"]))
        return r["task_key"], s

    def count_tasks(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM tasks").fetchone()[0]

    # -- annotators and sessions ----------------------------------------------------------------

    def add_annotator(self, name: str) -> str:
        """Create an annotator (or give an existing one a new token). Returns the token; only
        its hash is stored, so print it now."""
        name = name.strip()
        if not name:
            raise IlfError("annotator name must not be empty")
        token = secrets.token_urlsafe(24)
        with self.tx() as c:
            c.execute(
                "INSERT INTO annotators (name, token_hash, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET token_hash = excluded.token_hash",
                (name, hash_secret(token), now_iso()),
            )
            # A new token ends the annotator's old sessions.
            c.execute("DELETE FROM sessions WHERE annotator_id = (SELECT id FROM annotators WHERE name = ?)", (name,))
        return token

    def annotators(self) -> list[Annotator]:
        return [Annotator(r["id"], r["name"]) for r in self._conn().execute("SELECT id, name FROM annotators ORDER BY id")]

    def annotator_by_token(self, token: str) -> Annotator | None:
        if not token:
            return None
        r = self._conn().execute("SELECT id, name FROM annotators WHERE token_hash = ?", (hash_secret(token),)).fetchone()
        return Annotator(r["id"], r["name"]) if r else None

    def create_session(self, annotator: Annotator) -> tuple[str, str]:
        """A new browser session: (session id for the cookie, CSRF token for the forms)."""
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self.tx() as c:
            c.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", (hash_secret(sid), annotator.id, csrf, now_iso()))
        return sid, csrf

    def session(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        r = (
            self._conn()
            .execute(
                "SELECT a.id, a.name, s.csrf FROM sessions s JOIN annotators a ON a.id = s.annotator_id WHERE s.id_hash = ?",
                (hash_secret(sid),),
            )
            .fetchone()
        )
        return Session(Annotator(r["id"], r["name"]), r["csrf"]) if r else None

    def end_session(self, sid: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM sessions WHERE id_hash = ?", (hash_secret(sid),))

    # -- serving tasks --------------------------------------------------------------------------

    def next_task(
        self,
        annotator: Annotator,
        *,
        annotations_per_task: int = 1,
        exclusive: bool = True,
        lease_seconds: float = LEASE_SECONDS,
    ) -> str | None:
        """Lease the next task for this annotator and return its key (None: nothing left).

        A task is served while it has fewer than `annotations_per_task` submissions (feedback or
        skips) plus active leases of other annotators; with `exclusive`, never to two annotators
        at once. An annotator keeps their current task until they submit or the lease expires."""
        now = time.time()
        cap_leases = 1 if exclusive else annotations_per_task
        with self.tx() as c:
            row = c.execute(
                "SELECT l.task_key FROM leases l JOIN tasks t ON t.task_key = l.task_key"
                " WHERE l.annotator_id = ? AND l.expires_at > ?"
                " AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.annotator_id = l.annotator_id AND f.task_key = l.task_key)"
                " ORDER BY t.position LIMIT 1",
                (annotator.id, now),
            ).fetchone()
            if row is None:
                row = c.execute(
                    "SELECT t.task_key FROM tasks t WHERE"
                    " NOT EXISTS (SELECT 1 FROM feedback f WHERE f.task_key = t.task_key AND f.annotator_id = :a)"
                    " AND (SELECT COUNT(*) FROM leases l WHERE l.task_key = t.task_key AND l.annotator_id != :a"
                    "      AND l.expires_at > :now) < :cap_leases"
                    " AND (SELECT COUNT(*) FROM feedback f WHERE f.task_key = t.task_key AND f.annotator_id IS NOT NULL)"
                    "   + (SELECT COUNT(*) FROM leases l WHERE l.task_key = t.task_key AND l.annotator_id != :a"
                    "      AND l.expires_at > :now) < :cap"
                    " ORDER BY t.position LIMIT 1",
                    {"a": annotator.id, "now": now, "cap_leases": cap_leases, "cap": annotations_per_task},
                ).fetchone()
            if row is None:
                return None
            c.execute(
                "INSERT INTO leases VALUES (?, ?, ?) ON CONFLICT(task_key, annotator_id) DO UPDATE SET expires_at = excluded.expires_at",
                (row[0], annotator.id, now + lease_seconds),
            )
            return row[0]

    def progress(self, annotator: Annotator | None = None) -> dict[str, int]:
        """Counts for the progress bar: this annotator's feedback and skips, and all tasks."""
        c = self._conn()
        out = {
            "tasks": c.execute("SELECT COUNT(*) FROM tasks").fetchone()[0],
            "tasks_done": c.execute("SELECT COUNT(DISTINCT task_key) FROM feedback WHERE annotator_id IS NOT NULL").fetchone()[0],
        }
        if annotator is not None:
            for kind in ("feedback", "skip"):
                out[kind] = c.execute("SELECT COUNT(*) FROM feedback WHERE annotator_id = ? AND kind = ?", (annotator.id, kind)).fetchone()[
                    0
                ]
        return out

    # -- submissions ----------------------------------------------------------------------------

    def find_submission(self, submission_id: str) -> dict | None:
        r = self._conn().execute("SELECT * FROM feedback WHERE submission_id = ?", (submission_id,)).fetchone()
        return self._record(r) if r else None

    def submit(
        self,
        annotator: Annotator,
        submission_id: str,
        task_key: str,
        *,
        sample_pk: int | None = None,
        feedback: str | None = None,
        refinement: str | None = None,
        passed: bool | None = None,
        status: str | None = None,
        error: str | None = None,
        edit_distance: float | None = None,
        skip: bool = False,
        require_lease: bool = False,
        exclusive: bool = True,
    ) -> tuple[dict, bool]:
        """Store one human submission (feedback + refinement, or a skip) in one transaction.

        Returns (record, created). A submission id seen before returns the stored record with
        created=False (a retried POST); a second submission for the same task raises
        AlreadyAnnotated."""
        if not submission_id or len(submission_id) > 200:
            raise IlfError("submission_id must be a non-empty string of at most 200 characters")
        with self.tx() as c:
            r = c.execute("SELECT * FROM feedback WHERE submission_id = ?", (submission_id,)).fetchone()
            if r is not None:
                if r["annotator_id"] != annotator.id:
                    raise IlfError("submission_id already used by another annotator")
                return self._record(r), False
            if c.execute("SELECT 1 FROM feedback WHERE annotator_id = ? AND task_key = ?", (annotator.id, task_key)).fetchone():
                raise AlreadyAnnotated(f"{annotator.name} already annotated task {json.loads(task_key)!r}")
            if c.execute("SELECT 1 FROM tasks WHERE task_key = ?", (task_key,)).fetchone() is None:
                raise IlfError(f"unknown task {task_key}")
            if require_lease:  # the app: only the annotator the task was served to may answer it
                if c.execute("SELECT 1 FROM leases WHERE task_key = ? AND annotator_id = ?", (task_key, annotator.id)).fetchone() is None:
                    raise IlfError(f"task {json.loads(task_key)!r} was not served to {annotator.name}")
                if (
                    exclusive
                    and c.execute(
                        "SELECT 1 FROM leases WHERE task_key = ? AND annotator_id != ? AND expires_at > ?",
                        (task_key, annotator.id, time.time()),
                    ).fetchone()
                ):
                    raise IlfError(f"task {json.loads(task_key)!r} is reserved for another annotator now (your lease expired)")
            sample_key = program = None
            if sample_pk is not None:
                s = c.execute("SELECT sample_key, program FROM samples WHERE id = ? AND task_key = ?", (sample_pk, task_key)).fetchone()
                if s is None:
                    raise IlfError(f"sample {sample_pk} does not belong to task {task_key}")
                sample_key, program = s
            c.execute(
                "INSERT INTO feedback (feedback_id, submission_id, kind, task_key, sample_key, program, feedback, refinement,"
                " source, author, annotator_id, created_at, edit_distance, passed, status, error, meta)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'human', ?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    "human-" + uuid.uuid4().hex[:16],
                    submission_id,
                    "skip" if skip else "feedback",
                    task_key,
                    sample_key,
                    program,
                    None if skip else feedback,
                    None if skip else refinement,
                    annotator.name,
                    annotator.id,
                    now_iso(),
                    edit_distance,
                    None if passed is None else int(bool(passed)),
                    status,
                    error,
                ),
            )
            c.execute("DELETE FROM leases WHERE task_key = ? AND annotator_id = ?", (task_key, annotator.id))
            r = c.execute("SELECT * FROM feedback WHERE submission_id = ?", (submission_id,)).fetchone()
            return self._record(r), True

    # -- imported feedback (authors, llm, trace) ------------------------------------------------

    def add_feedback(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Import feedback records (any source); a record whose feedback_id is present is skipped.
        Keys beyond the record fields are kept and restored by `feedback_records`/`export`."""
        n = 0
        with self.tx() as c:
            for i, rec in enumerate(records):
                for f in ("task_id", "source", "feedback_id"):
                    if f not in rec:
                        raise IlfError(f"feedback record {i + 1}: missing field '{f}'")
                if rec["source"] not in SOURCES:
                    raise IlfError(f"feedback record {i + 1}: field 'source' must be one of {', '.join(SOURCES)}")
                extra = {k: v for k, v in rec.items() if k not in RECORD_FIELDS}
                passed = rec.get("passed")
                n += c.execute(
                    "INSERT OR IGNORE INTO feedback (feedback_id, kind, task_key, sample_key, program, feedback, refinement,"
                    " source, author, created_at, edit_distance, passed, status, error, meta)"
                    " VALUES (?, 'feedback', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        rec["feedback_id"],
                        key(rec["task_id"]),
                        key(rec.get("sample_id")),
                        rec.get("program"),
                        rec.get("feedback"),
                        rec.get("refinement"),
                        rec["source"],
                        rec.get("author"),
                        rec.get("created_at"),
                        rec.get("edit_distance"),
                        None if passed is None else int(bool(passed)),
                        rec.get("status"),
                        rec.get("error"),
                        key(extra) if extra else None,
                    ),
                ).rowcount
        return n

    # -- reading and export ---------------------------------------------------------------------

    @staticmethod
    def _record(r: sqlite3.Row) -> dict:
        rec = {
            "task_id": json.loads(r["task_key"]),
            "sample_id": json.loads(r["sample_key"]) if r["sample_key"] is not None else None,
            "program": r["program"],
            "feedback": r["feedback"],
            "refinement": r["refinement"],
            "source": r["source"],
            "author": r["author"],
            "created_at": r["created_at"],
            "feedback_id": r["feedback_id"],
            "edit_distance": r["edit_distance"],
            "passed": None if r["passed"] is None else bool(r["passed"]),
            "status": r["status"],
            "error": r["error"],
        }
        if r["kind"] == "skip":
            rec["skipped"] = True  # "none is easy to fix"
        if r["meta"]:
            rec.update(json.loads(r["meta"]))
        return rec

    def feedback_records(self, sources: Iterable[str] | None = None, include_skips: bool = False) -> list[dict]:
        """Stored records in insertion order (skips only with include_skips)."""
        q = "SELECT * FROM feedback"
        conds, args = [], []
        if not include_skips:
            conds.append("kind = 'feedback'")
        if sources:
            srcs = list(sources)
            conds.append(f"source IN ({', '.join('?' * len(srcs))})")
            args += srcs
        if conds:
            q += " WHERE " + " AND ".join(conds)
        return [self._record(r) for r in self._conn().execute(q + " ORDER BY id", args)]

    def export(self, path: str | os.PathLike, sources: Iterable[str] | None = None, include_skips: bool = False) -> int:
        """Write the feedback records to JSONL atomically; returns how many."""
        recs = self.feedback_records(sources, include_skips)
        write_jsonl(path, recs)
        return len(recs)

    # -- sandbox verdict cache ------------------------------------------------------------------

    def cached_verdict(self, cache_key: str) -> dict | None:
        r = self._conn().execute("SELECT verdict FROM verdicts WHERE key = ?", (cache_key,)).fetchone()
        return json.loads(r[0]) if r else None

    def save_verdict(self, cache_key: str, verdict: dict) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?)", (cache_key, key(verdict)))

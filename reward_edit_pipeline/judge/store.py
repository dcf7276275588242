"""`AnnotationStore`: the SQLite (WAL) store of judgments, keyed by content hash, safe against ``kill -9``.

Tables:

- ``judgments``: one row per *call key* = sha256 of (the digests of the images the perspective sees, the instruction,
  the perspective, the judge's fingerprint: prompt id and text hash, model, settings). A finished key is never asked
  again; a failed key keeps its reason and raw reply and is retried by the next run (``runs`` counts the tries).
- ``items``: one row per input item (id, instruction, image references and digests).
- ``current``: for every (item, perspective), the call key of the latest run's settings; reading results back by
  item goes through it, so changing a prompt or a setting invalidates exactly the perspectives it touches.
- ``batches`` / ``batch_requests``: Batch API jobs in flight, so an interrupted ``--batch`` run resumes polling.

Every write is its own transaction (WAL, ``synchronous=NORMAL``): a killed process loses at most the calls in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records import RewardRecord
from ..rewards import PERSPECTIVES
from .base import PerspectiveJudgment

SCHEMA_VERSION = "1"
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first bytes of every SQLite database file


def is_annotation_store(path: str | os.PathLike) -> bool:
    """Whether `path` is a file that starts like a SQLite database (what `AnnotationStore` writes)."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    instruction TEXT NOT NULL,
    original TEXT,
    edited TEXT,
    original_digest TEXT,
    edited_digest TEXT,
    source TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS judgments (
    call_key TEXT PRIMARY KEY,
    item_id TEXT NOT NULL,
    perspective TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    score REAL,
    verdict TEXT,
    failure_text TEXT NOT NULL DEFAULT '',
    error TEXT,
    error_message TEXT,
    raw_reply TEXT,
    prompt_id TEXT,
    judge TEXT,
    model TEXT,
    settings TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    runs INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS current (
    item_id TEXT NOT NULL,
    perspective TEXT NOT NULL,
    call_key TEXT NOT NULL,
    PRIMARY KEY (item_id, perspective)
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    input_file_id TEXT NOT NULL,
    status TEXT NOT NULL,
    request_count INTEGER NOT NULL,
    output_file_id TEXT,
    error_file_id TEXT,
    ingested INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_requests (
    call_key TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    perspective TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS judgments_item ON judgments (item_id);
"""


def call_key(perspective: str, instruction: str, image_digests: dict[str, str], fingerprint_digest: str) -> str:
    """The content hash identifying one judgment: images seen, instruction, perspective, judge settings."""
    payload = json.dumps(
        {
            "perspective": perspective,
            "instruction": instruction,
            "images": dict(sorted(image_digests.items())),
            "judge": fingerprint_digest,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoredItem:
    """One item read back from the store: its inputs and its current judgment per perspective (absent = pending)."""

    item_id: str
    instruction: str
    original: str | None
    edited: str | None
    judgments: dict[str, PerspectiveJudgment] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``"done"`` (all three perspectives ok), ``"failed"`` (some failed) or ``"pending"``."""
        if any(not j.ok for j in self.judgments.values()):
            return "failed"
        return "done" if all(p in self.judgments for p in PERSPECTIVES) else "pending"

    @property
    def complete(self) -> bool:
        return self.status == "done"

    @property
    def scores(self) -> tuple[float | None, ...]:
        return tuple(self.judgments[p].score if p in self.judgments else None for p in PERSPECTIVES)

    @property
    def failure_texts(self) -> tuple[str, ...]:
        return tuple(self.judgments[p].failure_text if p in self.judgments else "" for p in PERSPECTIVES)

    @property
    def reward_record(self) -> RewardRecord | None:
        """The item's rewards when every perspective is judged successfully, else ``None``."""
        if not self.complete:
            return None
        return RewardRecord(scores=self.scores, failure_texts=self.failure_texts, item_id=self.item_id)


def _row_to_judgment(row: sqlite3.Row) -> PerspectiveJudgment:
    return PerspectiveJudgment(
        perspective=row["perspective"],
        score=row["score"],
        verdict=row["verdict"],
        failure_text=row["failure_text"] or "",
        ok=row["status"] == "done",
        error=row["error"],
        error_message=row["error_message"],
        raw_reply=row["raw_reply"],
        prompt_id=row["prompt_id"],
        model=row["model"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        attempts=row["attempts"],
    )


class AnnotationStore:
    """An embedded SQLite store of judgments (WAL journal). Use as a context manager or call `close()`.

    Args:
        path (`str` or `Path`): the database file (created with its parent folder if missing).
        readonly (`bool`, defaults to `False`): open an existing store for reading only.
    """

    def __init__(self, path: str | os.PathLike, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"annotation store not found: {self.path}")
            uri = f"{self.path.resolve().as_uri()}?mode=ro"  # percent-encoded: any file name works
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.executescript(_SCHEMA)
            found = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if found is None:
                self._conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            elif found[0] != SCHEMA_VERSION:
                raise ValueError(f"{self.path}: store schema version {found[0]!r}, this code reads {SCHEMA_VERSION!r}")
        self._conn.row_factory = sqlite3.Row
        self.readonly = readonly

    def __enter__(self) -> AnnotationStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------------------------------------------------ writes
    def _transaction(self) -> sqlite3.Connection:
        if self.readonly:
            raise PermissionError(f"{self.path} was opened read-only")
        return self._conn

    def put_items(self, rows: Iterable[dict[str, Any]]) -> None:
        """Insert or update items and their current call keys in one transaction.

        Each row: ``item_id, instruction, original, edited, original_digest, edited_digest, source, call_keys`` (a
        ``{perspective: call_key}`` dict).
        """
        conn = self._transaction()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for row in rows:
                conn.execute(
                    "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(item_id) DO UPDATE SET "
                    "instruction=excluded.instruction, original=excluded.original, edited=excluded.edited, "
                    "original_digest=excluded.original_digest, edited_digest=excluded.edited_digest, "
                    "source=excluded.source, updated_at=excluded.updated_at",
                    (
                        row["item_id"],
                        row["instruction"],
                        row.get("original"),
                        row.get("edited"),
                        row.get("original_digest"),
                        row.get("edited_digest"),
                        row.get("source"),
                        now,
                    ),
                )
                for perspective, key in row.get("call_keys", {}).items():
                    conn.execute(
                        "INSERT INTO current VALUES (?, ?, ?) ON CONFLICT(item_id, perspective) "
                        "DO UPDATE SET call_key=excluded.call_key",
                        (row["item_id"], perspective, key),
                    )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def record(
        self,
        key: str,
        item_id: str,
        judgment: PerspectiveJudgment,
        judge: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """Write one judgment under its call key (a success replaces an earlier failure; a failure never replaces a
        success). Atomic."""
        self._record(self._transaction(), key, item_id, judgment, judge, settings)

    def record_many(self, entries: Iterable[tuple[str, str, PerspectiveJudgment, str | None, dict | None]]) -> None:
        """`record` for many ``(key, item_id, judgment, judge, settings)`` entries in one transaction."""
        conn = self._transaction()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for key, item_id, judgment, judge, settings in entries:
                self._record(conn, key, item_id, judgment, judge, settings)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _record(
        conn: sqlite3.Connection,
        key: str,
        item_id: str,
        judgment: PerspectiveJudgment,
        judge: str | None,
        settings: dict[str, Any] | None,
    ) -> None:
        now = time.time()
        status = "done" if judgment.ok else "failed"
        conn.execute(
            "INSERT INTO judgments (call_key, item_id, perspective, status, score, verdict, failure_text, error, "
            "error_message, raw_reply, prompt_id, judge, model, settings, prompt_tokens, completion_tokens, attempts, "
            "runs, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?) "
            "ON CONFLICT(call_key) DO UPDATE SET status=excluded.status, score=excluded.score, "
            "verdict=excluded.verdict, failure_text=excluded.failure_text, error=excluded.error, "
            "error_message=excluded.error_message, raw_reply=excluded.raw_reply, prompt_id=excluded.prompt_id, "
            "judge=excluded.judge, model=excluded.model, settings=excluded.settings, "
            "prompt_tokens=judgments.prompt_tokens + excluded.prompt_tokens, "
            "completion_tokens=judgments.completion_tokens + excluded.completion_tokens, "
            "attempts=judgments.attempts + excluded.attempts, runs=judgments.runs + 1, updated_at=excluded.updated_at "
            "WHERE judgments.status != 'done'",
            (
                key,
                item_id,
                judgment.perspective,
                status,
                judgment.score,
                judgment.verdict,
                judgment.failure_text,
                judgment.error,
                judgment.error_message,
                judgment.raw_reply,
                judgment.prompt_id,
                judge,
                judgment.model,
                json.dumps(settings, sort_keys=True, default=str) if settings is not None else None,
                judgment.prompt_tokens,
                judgment.completion_tokens,
                judgment.attempts,
                now,
                now,
            ),
        )

    # ------------------------------------------------------------------------------------------------------- reads
    def lookup(self, key: str) -> PerspectiveJudgment | None:
        """The stored judgment of a call key, or ``None``."""
        row = self._conn.execute("SELECT * FROM judgments WHERE call_key=?", (key,)).fetchone()
        return _row_to_judgment(row) if row is not None else None

    def done_keys(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` already judged successfully."""
        keys = list(keys)
        done: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT call_key FROM judgments WHERE status='done' AND call_key IN ({marks})", chunk
            ).fetchall()
            done.update(row[0] for row in rows)
        return done

    def get(self, item_id: str) -> StoredItem | None:
        """An item with its current judgments, or ``None`` when the store does not know it."""
        row = self._conn.execute("SELECT * FROM items WHERE item_id=?", (item_id,)).fetchone()
        if row is None:
            return None
        return self._stored_item(row)

    def _stored_item(self, row: sqlite3.Row) -> StoredItem:
        judgments = {}
        for judgment_row in self._conn.execute(
            "SELECT j.* FROM current c JOIN judgments j ON j.call_key = c.call_key WHERE c.item_id=?",
            (row["item_id"],),
        ):
            judgments[judgment_row["perspective"]] = _row_to_judgment(judgment_row)
        ordered = {p: judgments[p] for p in PERSPECTIVES if p in judgments}
        return StoredItem(row["item_id"], row["instruction"], row["original"], row["edited"], ordered)

    def __iter__(self) -> Iterator[StoredItem]:
        return self.iter_items()

    def iter_items(self) -> Iterator[StoredItem]:
        """All items in id order with their current judgments."""
        for row in self._conn.execute("SELECT * FROM items ORDER BY item_id").fetchall():
            yield self._stored_item(row)

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def __contains__(self, item_id: object) -> bool:
        return self._conn.execute("SELECT 1 FROM items WHERE item_id=?", (item_id,)).fetchone() is not None

    def counts(self) -> dict[str, Any]:
        """Totals over current judgments: done, failed by reason, pending, tokens."""
        rows = self._conn.execute(
            "SELECT j.status AS status, j.error AS error, COUNT(*) AS n, SUM(j.prompt_tokens) AS pt, "
            "SUM(j.completion_tokens) AS ct FROM current c LEFT JOIN judgments j ON j.call_key = c.call_key "
            "GROUP BY j.status, j.error"
        ).fetchall()
        result: dict[str, Any] = {"done": 0, "failed": 0, "pending": 0, "failed_by_reason": {}, "prompt_tokens": 0}
        result["completion_tokens"] = 0
        for row in rows:
            if row["status"] is None:
                result["pending"] += row["n"]
                continue
            result[row["status"]] += row["n"]
            if row["status"] == "failed":
                result["failed_by_reason"][row["error"]] = result["failed_by_reason"].get(row["error"], 0) + row["n"]
            result["prompt_tokens"] += row["pt"] or 0
            result["completion_tokens"] += row["ct"] or 0
        return result

    # ----------------------------------------------------------------------------------------------- batch bookkeeping
    def add_batch(self, batch_id: str, input_file_id: str, status: str, requests: list[tuple[str, str, str]]) -> None:
        """Record a submitted Batch API job and its ``(call_key, item_id, perspective)`` requests atomically."""
        conn = self._transaction()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO batches (batch_id, input_file_id, status, request_count, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (batch_id, input_file_id, status, len(requests), now, now),
            )
            conn.executemany(
                "INSERT INTO batch_requests VALUES (?, ?, ?, ?) ON CONFLICT(call_key) DO UPDATE SET "
                "batch_id=excluded.batch_id, item_id=excluded.item_id, perspective=excluded.perspective",
                [(key, batch_id, item_id, perspective) for key, item_id, perspective in requests],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def update_batch(self, batch_id: str, **fields: Any) -> None:
        allowed = {"status", "output_file_id", "error_file_id", "ingested"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown batch fields {sorted(unknown)}; allowed: {sorted(allowed)}")
        assignments = ", ".join(f"{name}=?" for name in fields)
        self._transaction().execute(
            f"UPDATE batches SET {assignments}, updated_at=? WHERE batch_id=?",
            (*fields.values(), time.time(), batch_id),
        )

    def open_batches(self) -> list[dict[str, Any]]:
        """Batches not yet ingested."""
        return [dict(row) for row in self._conn.execute("SELECT * FROM batches WHERE ingested=0 ORDER BY created_at")]

    def batch_requests(self, batch_id: str) -> list[tuple[str, str, str]]:
        rows = self._conn.execute(
            "SELECT call_key, item_id, perspective FROM batch_requests WHERE batch_id=?", (batch_id,)
        ).fetchall()
        return [(row[0], row[1], row[2]) for row in rows]

    def keys_in_open_batches(self) -> set[str]:
        rows = self._conn.execute(
            "SELECT r.call_key FROM batch_requests r JOIN batches b ON b.batch_id = r.batch_id WHERE b.ingested=0"
        ).fetchall()
        return {row[0] for row in rows}

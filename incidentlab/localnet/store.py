"""A validator's block store: committed blocks and their seen commits in sqlite3.

One file per validator under its home folder, so a restarted validator resumes at the height
it had. Standard library only.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

__all__ = ["BlockStore"]


class BlockStore:
    """Committed blocks by height; safe to use from several threads of one process."""

    def __init__(self, path: str | Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS blocks ("
            " height INTEGER PRIMARY KEY, hash TEXT NOT NULL, time TEXT NOT NULL,"
            " block TEXT NOT NULL, seen_commit TEXT NOT NULL)"
        )

    def save(self, height: int, block_hash: str, block: dict, seen_commit: dict) -> None:
        """Store a committed block; storing the same height twice keeps the first."""
        row = (height, block_hash, block["header"]["time"], json.dumps(block), json.dumps(seen_commit))
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO blocks VALUES (?, ?, ?, ?, ?)", row)

    def height(self) -> int:
        """Return the latest stored height, 0 for an empty store."""
        with self._lock:
            (value,) = self._db.execute("SELECT COALESCE(MAX(height), 0) FROM blocks").fetchone()
        return int(value)

    def base(self) -> int:
        """Return the lowest stored height, 0 for an empty store."""
        with self._lock:
            (value,) = self._db.execute("SELECT COALESCE(MIN(height), 0) FROM blocks").fetchone()
        return int(value)

    def load(self, height: int) -> tuple[dict, str, dict] | None:
        """Return (block, block_hash, seen_commit) at ``height``, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT block, hash, seen_commit FROM blocks WHERE height = ?", (height,)
            ).fetchone()
        if row is None:
            return None
        return json.loads(row[0]), row[1], json.loads(row[2])

    def close(self) -> None:
        with self._lock:
            self._db.close()

"""The batch manifest: one row per gradebook row, written atomically after each job, so a batch resumes."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from .._fileio import read_json, write_json_atomic
from ..errors import ConfigError

__all__ = ["Manifest", "MANIFEST_VERSION"]

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1


class Manifest:
    """Rows by key in ``out/manifest.json``; every update rewrites the file atomically under a lock.

    Raises ConfigError when an existing manifest is not valid JSON or has another version.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            data = read_json(self.path, default={"version": MANIFEST_VERSION, "rows": {}})
        except ValueError as exc:
            raise ConfigError(f"manifest {self.path} is not valid JSON ({exc}); move it aside to grade "
                              "the whole batch again") from exc
        if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION or not isinstance(data.get("rows"), dict):
            raise ConfigError(f"manifest {self.path} is not a version {MANIFEST_VERSION} manifest; move it aside "
                              "to grade the whole batch again")
        self.rows: dict[str, dict] = data["rows"]

    def is_done(self, key: str, sha256: str, time_scale: float) -> bool:
        """Return True when ``key`` was graded from the same file content at the same time scale."""
        row = self.rows.get(key)
        return bool(row) and row.get("sha256") == sha256 and row.get("time_scale") == time_scale

    def put(self, row: dict) -> None:
        """Store ``row`` under row["key"] and write the manifest."""
        with self._lock:
            self.rows[row["key"]] = row
            write_json_atomic(self.path, {"version": MANIFEST_VERSION, "rows": self.rows})
        logger.debug("manifest %s: row %s is %s", self.path, row["key"], row["status"])

    def remove_absent(self, keys: set[str]) -> None:
        """Drop rows whose submission is no longer in the folder, and write the manifest."""
        with self._lock:
            for key in set(self.rows) - keys:
                logger.info("manifest %s: dropping row %s, its submission is gone", self.path, key)
                del self.rows[key]
            write_json_atomic(self.path, {"version": MANIFEST_VERSION, "rows": self.rows})

"""The fault journal: one JSON file per fault under the lab home, written before the fault lands.

An entry records the exact undo, so a fault whose process died (even by SIGKILL) can be
undone later by ``incidentlab cleanup``. Entries are only ever replaced atomically.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from .._fileio import read_json, write_json_atomic
from ..errors import RecordError

__all__ = ["Journal", "STATES", "OPEN_STATES", "new_fault_id", "process_identity", "process_alive"]

logger = logging.getLogger(__name__)

#: pending: written, not yet applied; active: applied; reverted: undone and verified;
#: revert_failed: the undo ran but the target is not back (stays open, reported loudly).
STATES = ("pending", "active", "reverted", "revert_failed")
OPEN_STATES = ("pending", "active", "revert_failed")
JOURNAL_FOLDER = "chaos"


def new_fault_id(kind: str) -> str:
    """Return a fault id like ``pause-20261204T193000Z-3f9a``."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return f"{kind}-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def process_identity(pid: int | None = None) -> dict:
    """Return {pid, start_ticks} of a process, so a reused pid is never mistaken for it."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "start_ticks": _start_ticks(pid)}


def process_alive(identity: dict | None) -> bool:
    """Return True when the process of ``identity`` still runs (same pid and same start time)."""
    if not identity or not identity.get("pid"):
        return False
    ticks = _start_ticks(identity["pid"])
    return ticks is not None and ticks == identity.get("start_ticks")


class Journal:
    """The fault entries of one lab home, in ``HOME/chaos/``."""

    def __init__(self, home: str | os.PathLike):
        self.directory = Path(home) / JOURNAL_FOLDER

    def path(self, fault_id: str) -> Path:
        return self.directory / f"{fault_id}.json"

    def write(self, entry: dict) -> dict:
        """Write ``entry`` atomically, adding a history line for a changed state; return it."""
        history = entry.setdefault("history", [])
        if not history or history[-1]["state"] != entry["state"]:
            history.append({"state": entry["state"], "at": _now(), "note": entry.get("note", "")})
        write_json_atomic(self.path(entry["id"]), entry)
        return entry

    def read(self, fault_id: str) -> dict:
        """Return one entry; raises RecordError when it is missing or unreadable."""
        path = self.path(fault_id)
        try:
            entry = read_json(path)
        except ValueError as exc:
            raise RecordError(f"fault journal entry {path} is not valid JSON ({exc}); inspect or remove it") from exc
        if entry is None:
            raise RecordError(f"no fault {fault_id!r} in the journal {self.directory}; list them with `incidentlab chaos journal`")
        return entry

    def entries(self) -> list[dict]:
        """Return every readable entry, oldest first; unreadable files are logged and skipped."""
        entries = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                entry = read_json(path)
            except ValueError as exc:
                logger.warning("skipping unreadable fault journal entry %s: %s", path, exc)
                continue
            if isinstance(entry, dict) and "id" in entry:
                entries.append(entry)
        return sorted(entries, key=lambda e: e.get("started_at") or "")

    def open_entries(self) -> list[dict]:
        """Return the entries not yet verified as reverted."""
        return [entry for entry in self.entries() if entry.get("state") in OPEN_STATES]

    def frame(self) -> Any:
        """Return the journal as a table: id, kind, target, state, started_at, expires_at, owner."""
        import pandas as pd

        rows = [{
            "id": e["id"], "kind": e["kind"], "backend": e.get("backend"), "target": e.get("target"),
            "state": e["state"], "started_at": e.get("started_at"), "expires_at": e.get("expires_at"),
            "owner_pid": (e.get("owner") or {}).get("pid"), "note": e.get("note", ""),
        } for e in self.entries()]
        columns = ["id", "kind", "backend", "target", "state", "started_at", "expires_at", "owner_pid", "note"]
        return pd.DataFrame(rows, columns=columns)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _start_ticks(pid: int) -> int | None:
    """Return the process start time in clock ticks from /proc/PID/stat, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name in parentheses may contain spaces, so split after its closing parenthesis.
    fields = stat.rpartition(")")[2].split()
    if len(fields) < 20 or fields[0] == "Z":
        return None
    return int(fields[19])

"""Reconcile the fault journal: undo the faults that are still open and record the result."""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

from .journal import Journal, process_alive
from .undo import run_undo

__all__ = ["reconcile", "revert_matching"]

logger = logging.getLogger(__name__)


def reconcile(home: str | Path, backends: dict, *, force: bool = False, reason: str = "cleanup requested") -> list[dict]:
    """Undo the open faults of the journal in ``home``; return the entries acted on.

    Without ``force`` only orphans are undone: faults whose owner process is gone (even if it
    was SIGKILLed) or whose expiry has passed. Detached faults (injected from the command line,
    meant to stay until undone) are orphans only once expired. With ``force`` every open fault
    is undone (``incidentlab cleanup``, ``halt``). ``backends`` maps a backend name to the backend
    that can undo its steps.
    """
    journal = Journal(home)
    acted = []
    for entry in journal.open_entries():
        why = _orphan_reason(entry) if not force else reason
        if why is None:
            continue
        backend = backends.get(entry.get("backend"))
        if backend is None:
            entry["note"] = f"cannot undo: backend {entry.get('backend')!r} is not available here"
            logger.error("fault=%s target=%s: %s", entry["id"], entry.get("target"), entry["note"])
            continue
        ok, note = run_undo(entry["undo"], backend)
        entry["state"] = "reverted" if ok else "revert_failed"
        entry["note"] = f"{why}: {note}"
        journal.write(entry)
        log = logger.info if ok else logger.error
        log("cleanup fault=%s target=%s state=%s: %s", entry["id"], entry.get("target"), entry["state"], entry["note"])
        acted.append(entry)
    return acted


def _orphan_reason(entry: dict) -> str | None:
    expires_at = entry.get("expires_at")
    if expires_at and _parse(expires_at) <= _dt.datetime.now(_dt.timezone.utc):
        return "expired"
    if entry.get("detached"):
        return None
    if entry.get("state") == "revert_failed":
        return "earlier rollback failed"
    if not process_alive(entry.get("owner")):
        return f"owner process {(entry.get('owner') or {}).get('pid')} is gone"
    return None


def _parse(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def revert_matching(home: str | Path, backend, *, target: str, kinds: tuple[str, ...], reason: str) -> list[dict]:
    """Undo the open faults of ``kinds`` on ``target`` (``chaos unpause`` closes an open pause)."""
    journal = Journal(home)
    acted = []
    for entry in journal.open_entries():
        if entry.get("target") != target or entry.get("kind") not in kinds:
            continue
        ok, note = run_undo(entry["undo"], backend)
        entry["state"] = "reverted" if ok else "revert_failed"
        entry["note"] = f"{reason}: {note}"
        journal.write(entry)
        acted.append(entry)
    return acted

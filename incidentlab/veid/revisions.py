"""Configuration revisions of the VEID service: a JSON file in the service's folder, replaced atomically.

Each revision has an id, author, time, change and the full configuration it deploys; one of
them is current. A rollback adds a revision that copies an earlier one, like `kubectl rollout undo`.
Standard library only.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import threading
from pathlib import Path

__all__ = ["RevisionStore", "DEFAULT_CONFIG", "SETTINGS", "diff_configs", "check_change"]

#: The configuration of the first revision: the preprocessing and model the scorer was trained with.
DEFAULT_CONFIG = {"divisor": 255.0, "channel_order": "RGB", "model_file": "", "model_version": "1.0.0"}
#: Settings a deploy may change, with what each one accepts.
SETTINGS = {
    "divisor": "a positive number that pixel values are divided by (255 maps them to [0, 1])",
    "channel_order": "RGB or BGR, the order of the channels fed to the model",
    "model_file": "path of the weights file ('' is the shipped data/veid file)",
    "model_version": "the manifest version that the model file must match",
}
STORE_FILE = "revisions.json"


class RevisionStore:
    """The revisions of one VEID service, in ``directory``/revisions.json, shared by the service and cleanup."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / STORE_FILE
        self._lock = threading.Lock()

    def read(self) -> dict:
        """Return {"current": id, "revisions": [...]}, creating the first revision when the file is missing."""
        with self._locked():
            return self._read()

    def current(self) -> dict:
        """Return the current revision."""
        data = self.read()
        return self._find(data, data["current"])

    def deploy(self, change: dict, author: str, message: str = "") -> dict:
        """Add a revision that applies ``change`` to the current configuration and make it current; return it.

        Raises ValueError for an unknown setting or an invalid value.
        """
        check_change(change)
        with self._locked():
            data = self._read()
            config = {**self._find(data, data["current"])["config"], **change}
            return self._append(data, config, author, change, message)

    def rollback(self, to: str | None, author: str) -> dict:
        """Add a revision that copies revision ``to`` (default: the one before the current) and make it current.

        Returns the new revision. Raises KeyError for an unknown id and ValueError when there is
        no earlier revision.
        """
        with self._locked():
            data = self._read()
            if to is None:
                to = self._previous_config_revision(data)
            target = self._find(data, to)
            message = f"rollback to {to}"
            return self._append(data, dict(target["config"]), author, {"rollback_to": to}, message)

    # -- private helpers ----------------------------------------------------------------

    def _read(self) -> dict:
        if self.path.exists():
            return json.loads(self.path.read_text(encoding="utf-8"))
        first = {"id": "rev-1", "author": "release-pipeline", "time": _now(), "change": {},
                 "message": "initial deployment of veid-scorer 1.0.0", "config": dict(DEFAULT_CONFIG)}
        data = {"current": "rev-1", "revisions": [first]}
        self._write(data)
        return data

    def _append(self, data: dict, config: dict, author: str, change: dict, message: str) -> dict:
        revision = {"id": f"rev-{len(data['revisions']) + 1}", "author": author, "time": _now(),
                    "change": change, "message": message, "config": config}
        data["revisions"].append(revision)
        data["current"] = revision["id"]
        self._write(data)
        return revision

    def _previous_config_revision(self, data: dict) -> str:
        """Return the newest revision before the current one whose configuration differs from it."""
        current = self._find(data, data["current"])
        for revision in reversed(data["revisions"]):
            if revision["id"] != current["id"] and revision["config"] != current["config"]:
                return revision["id"]
        raise ValueError(f"no revision before {current['id']} has another configuration, so there is nothing "
                         "to roll back to; list the revisions and pass to=")

    @staticmethod
    def _find(data: dict, revision_id: str) -> dict:
        for revision in data["revisions"]:
            if revision["id"] == revision_id:
                return revision
        known = ", ".join(r["id"] for r in data["revisions"])
        raise KeyError(f"no revision {revision_id!r}; known revisions: {known}")

    def _write(self, data: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        temporary.replace(self.path)

    def _locked(self):
        return _FileLock(self.directory / ".revisions.lock", self._lock)


def check_change(change: dict) -> None:
    """Raise ValueError naming the setting when ``change`` has an unknown setting or an invalid value."""
    if not isinstance(change, dict) or not change:
        raise ValueError(f"change={change!r} is invalid; pass a mapping of settings, like {{'divisor': 255}}")
    for key, value in change.items():
        if key not in SETTINGS:
            raise ValueError(f"setting {key!r} is unknown; the settings are {', '.join(SETTINGS)}")
        valid = {
            "divisor": not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0,
            "channel_order": value in ("RGB", "BGR"),
            "model_file": isinstance(value, str),
            "model_version": isinstance(value, str) and bool(value),
        }[key]
        if not valid:
            raise ValueError(f"{key}={value!r} is invalid; use {SETTINGS[key]}")


def diff_configs(old: dict, new: dict) -> list[dict]:
    """Return the settings that differ between two configurations: [{setting, old, new}]."""
    keys = sorted(set(old) | set(new))
    return [{"setting": key, "old": old.get(key), "new": new.get(key)} for key in keys if old.get(key) != new.get(key)]


class _FileLock:
    """flock on a lock file plus a thread lock, so that the service and cleanup never interleave writes."""

    def __init__(self, path: Path, thread_lock: threading.Lock):
        self.path = path
        self.thread_lock = thread_lock
        self.handle = None

    def __enter__(self):
        self.thread_lock.acquire()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+", encoding="utf-8")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        self.thread_lock.release()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

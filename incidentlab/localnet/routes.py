"""Route overrides: where peers and probes reach a validator while a fault proxy sits in front of it.

``routes.json`` lives beside ``network.json``. A latency fault writes ``{name: {"p2p": port,
"rpc": port}}`` for its target and removes it on revert; readers fall back to the network
file's ports. Standard library only, because validator processes read it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

__all__ = ["ROUTES_FILE", "read_routes", "set_routes", "remove_routes", "RouteCache"]

ROUTES_FILE = "routes.json"


def read_routes(directory: str | os.PathLike, *, live_only: bool = True) -> dict:
    """Return the route overrides in ``directory`` as {name: {kind: port}}; {} when there are none.

    A route lists the state files of the proxies it goes through, which each proxy deletes when it
    exits. With ``live_only`` a route whose proxy has gone (expired, killed) is left out, so
    traffic goes straight to the target again.
    """
    try:
        with open(Path(directory) / ROUTES_FILE, encoding="utf-8") as handle:
            routes = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(routes, dict):
        return {}
    result = {}
    for name, route in routes.items():
        proxies = route.get("proxies", [])
        if live_only and not all(os.path.exists(path) for path in proxies):
            continue
        result[name] = {kind: port for kind, port in route.items() if kind != "proxies"}
    return result


def set_routes(directory: str | os.PathLike, name: str, ports: dict, proxies: list[str] = ()) -> None:
    """Route ``name``'s ports (like {"p2p": 40001, "rpc": 40002}) through the proxies of ``proxies``.

    ``proxies`` are the proxies' state files; the route counts only while they all exist.
    """
    routes = _read_raw(directory)
    routes[name] = {**{kind: int(port) for kind, port in ports.items()}, "proxies": [str(p) for p in proxies]}
    _write(Path(directory), routes)


def remove_routes(directory: str | os.PathLike, name: str) -> bool:
    """Remove ``name``'s overrides; return True when there were any."""
    routes = _read_raw(directory)
    if routes.pop(name, None) is None:
        return False
    _write(Path(directory), routes)
    return True


class RouteCache:
    """Routes of one localnet, re-read at most every ``interval`` seconds (for the peers' send path)."""

    def __init__(self, directory: str | os.PathLike, interval: float = 0.2):
        self.path = Path(directory) / ROUTES_FILE
        self.interval = interval
        self._lock = threading.Lock()
        self._checked = 0.0
        self._routes: dict = {}

    def port(self, name: str, kind: str, default: int) -> int:
        """Return the port to reach ``name``'s ``kind`` endpoint: its override, else ``default``."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self.interval:
                self._checked = now
                # Re-read even when the file is unchanged: a proxy that exits makes its route void.
                self._routes = read_routes(self.path.parent)
            return int(self._routes.get(name, {}).get(kind, default))


def _read_raw(directory: str | os.PathLike) -> dict:
    try:
        with open(Path(directory) / ROUTES_FILE, encoding="utf-8") as handle:
            routes = json.load(handle)
    except (OSError, ValueError):
        return {}
    return routes if isinstance(routes, dict) else {}


def _write(directory: Path, routes: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{ROUTES_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(routes, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, directory / ROUTES_FILE)

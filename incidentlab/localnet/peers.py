"""Peer connections of a validator: push consensus messages, pull status and blocks.

Each peer has its own sender thread and queue, so a frozen peer (SIGSTOP) delays only the
messages meant for it. Standard library only.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import threading
import time

from .network import ValidatorSpec
from .routes import RouteCache

__all__ = ["Peer"]

logger = logging.getLogger(__name__)

#: Messages waiting for one peer; older ones are dropped first when a peer cannot keep up.
MAX_QUEUED = 256
#: A peer counts as connected while its last successful exchange is this recent (seconds, scaled).
CONNECTED_WINDOW = 3.0


class Peer:
    """One peer validator reached over HTTP on its p2p port."""

    def __init__(self, spec: ValidatorSpec, *, time_scale: float, routes: RouteCache | None = None):
        self.spec = spec
        # A latency fault can route this peer through a proxy; the cache says which port to dial.
        self.routes = routes
        # A frozen peer accepts connections and never answers: bound every exchange.
        self.timeout = min(1.0, max(0.2, 0.5 * time_scale))
        self.backoff = max(0.2, 1.0 * time_scale)
        self.window = max(1.0, CONNECTED_WINDOW * time_scale)
        self.last_ok = 0.0
        self.down_until = 0.0
        self._queue: collections.deque = collections.deque(maxlen=MAX_QUEUED)
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._send_loop, name=f"peer-{spec.name}", daemon=True)
        self._connection: http.client.HTTPConnection | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()

    def connected(self) -> bool:
        return time.monotonic() - self.last_ok < self.window

    def send(self, message: dict) -> None:
        """Queue ``message`` for the peer; never blocks."""
        with self._wake:
            self._queue.append(message)
            self._wake.notify()

    def fetch_status(self) -> dict | None:
        """Return the peer's {latest_height, height, round}, or None when it does not answer."""
        return self._get("/p2p/status")

    def fetch_block(self, height: int) -> dict | None:
        """Return {block, block_hash, commit} at ``height`` from the peer, or None."""
        return self._get(f"/p2p/block?height={height}")

    # -- internals ---------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                message = self._queue.popleft()
            if time.monotonic() < self.down_until and message.get("type") != "status":
                continue  # the peer is unreachable: drop consensus traffic until it answers again
            self._post(message)

    def _post(self, message: dict) -> None:
        body = json.dumps(message).encode()
        try:
            connection = self._connect()
            connection.request("POST", "/p2p/msg", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise http.client.HTTPException(f"HTTP {response.status}")
        except (OSError, http.client.HTTPException) as exc:
            self._on_failure(exc)
            return
        self.last_ok = time.monotonic()
        self.down_until = 0.0

    def _get(self, path: str) -> dict | None:
        connection = http.client.HTTPConnection("127.0.0.1", self._port(), timeout=self.timeout * 4)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            payload = response.read()
            if response.status != 200:
                return None
            self.last_ok = time.monotonic()
            return json.loads(payload)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            logger.debug("GET %s from %s failed: %s", path, self.spec.name, exc)
            return None
        finally:
            connection.close()

    def _port(self) -> int:
        default = self.spec.ports["p2p"]
        return self.routes.port(self.spec.name, "p2p", default) if self.routes else default

    def _connect(self) -> http.client.HTTPConnection:
        port = self._port()
        if self._connection is not None and self._connection.port != port:
            self._connection.close()  # the route changed: dial the new port
            self._connection = None
        if self._connection is None:
            self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
        return self._connection

    def _on_failure(self, exc: Exception) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self.down_until == 0.0:
            logger.info("peer %s unreachable: %s", self.spec.name, exc)
        self.down_until = time.monotonic() + self.backoff

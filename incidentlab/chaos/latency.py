"""The latency fault: delay and jitter on a target's traffic, through the fault proxy or netem.

The proxy method works on every backend: a proxy process sits in front of the target's p2p and
RPC ports, and the routes file steers peers and probes through it. The netem method needs the
Docker backend, ``tc`` and NET_ADMIN in the container, the kernel's ``sch_netem`` and a target
that does not share the host's network; when any is missing the fault says so and how to use
the proxy instead.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, FaultError
from ..localnet.routes import set_routes
from .faults import Fault, register

if TYPE_CHECKING:
    from ..lab import Lab

__all__ = ["Latency", "netem_problems"]

logger = logging.getLogger(__name__)

METHODS = ("proxy", "netem")
#: Maximum lifetime of a proxy whose fault has no duration, so no proxy can outlive the lab for long.
MAX_PROXY_LIFETIME = 24 * 3600
PROXY_START_TIMEOUT = 10.0
PROXIED_PORTS = ("p2p", "rpc")


@register("latency")
class Latency(Fault):
    """Add ``delay`` seconds (plus or minus ``jitter``) to the target's traffic.

    ``method`` is "proxy" (every backend) or "netem" (Docker, where the kernel allows it).
    ``duration`` (seconds, before time scaling) ends the fault by itself; None keeps it until
    reverted. Unlike the other durations, ``delay`` and ``jitter`` are not time-scaled: they are
    what the learner measures.
    """

    def __init__(self, lab: "Lab", target: str, *, delay: float = 0.1, jitter: float = 0.0,
                 method: str = "proxy", duration: float | None = None, **options: Any) -> None:
        super().__init__(lab, target, **options)
        if method == "proxy" and target not in lab.validators():
            raise ConfigError(f"latency through the proxy works on validators ({', '.join(lab.validators())}), "
                              f"not on {target!r}; pause or stop it instead")
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 < delay <= 60:
            raise ConfigError(f"delay={delay!r} is out of range; give seconds from 0.001 to 60, like 0.1 for 100 ms")
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= delay:
            raise ConfigError(f"jitter={jitter!r} is out of range; use 0 up to the delay ({delay})")
        if method not in METHODS:
            raise ConfigError(f"method={method!r} is invalid; use 'proxy' (works everywhere) or 'netem'")
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))
                                     or not 0 < duration <= MAX_PROXY_LIFETIME):
            raise ConfigError(f"duration={duration!r} is out of range; use None or 1 to {MAX_PROXY_LIFETIME} seconds")
        self.delay, self.jitter, self.method, self.seconds = float(delay), float(jitter), method, duration
        self.run_dir = lab.config.localnet_dir / "run"

    def params(self) -> dict:
        return {"delay": self.delay, "jitter": self.jitter, "method": self.method, "duration": self.seconds}

    def duration(self) -> float | None:
        return None if self.seconds is None else self.seconds * self.lab.config.time_scale

    def plan(self) -> list[str]:
        amount = f"{self.delay * 1000:.0f} ms (jitter {self.jitter * 1000:.0f} ms)"
        if self.method == "netem":
            return [f"tc qdisc replace dev eth0 root netem delay {amount} in {self.target}",
                    "on revert: delete that qdisc"]
        return [f"start fault proxies adding {amount} in front of {self.target}'s p2p and RPC ports",
                f"route peers and probes to {self.target} through them",
                "on revert: remove the route and stop the proxies"]

    def undo_steps(self) -> list[dict]:
        if self.method == "netem":
            return [{"op": "netem_delete", "target": self.target, "dev": "eth0"}]
        steps = [{"op": "remove_route", "directory": str(self.lab.config.localnet_dir), "target": self.target}]
        return steps + [{"op": "stop_proxy", "state": str(self._state_path(kind))} for kind in PROXIED_PORTS]

    def apply(self) -> None:
        if self.method == "netem":
            from .netem import add_netem

            add_netem(self.lab.backend, self.target, self.delay, self.jitter)
            return
        spec = self.lab.backend.network().validator(self.target)
        ports = {kind: self._start_proxy(kind, spec.ports[kind]) for kind in PROXIED_PORTS}
        set_routes(self.lab.config.localnet_dir, self.target, ports,
                   proxies=[str(self._state_path(kind)) for kind in PROXIED_PORTS])
        logger.info("latency fault=%s: %s routed through proxies %s", self.id, self.target, ports)

    # -- helpers ---------------------------------------------------------------------------

    def _state_path(self, kind: str) -> Path:
        return self.run_dir / f"{self.id}-{kind}.proxy.json"

    def _start_proxy(self, kind: str, upstream_port: int) -> int:
        state = self._state_path(kind)
        expires = time.time() + (self.duration() or MAX_PROXY_LIFETIME)
        command = [sys.executable, "-m", "incidentlab.chaos.proxy", "--listen", "127.0.0.1:0",
                   "--upstream", f"127.0.0.1:{upstream_port}", "--kind", "latency",
                   "--delay-ms", f"{self.delay * 1000:g}", "--jitter-ms", f"{self.jitter * 1000:g}",
                   "--expires-at", f"{expires:.3f}", "--state", str(state)]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.run_dir / f"{self.id}-{kind}.proxy.log", "ab")
        with log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + PROXY_START_TIMEOUT
        while time.monotonic() < deadline:
            if state.exists():
                from .._fileio import read_json

                return int(read_json(state)["port"])
            if process.poll() is not None:
                break
            time.sleep(0.02)
        raise FaultError(f"the fault proxy for {self.target}'s {kind} port did not start "
                         f"(exit code {process.poll()}): {_last_line(log.name)}; see {log.name}")


def _last_line(path: str) -> str:
    """Return the last line of the proxy's log, which states why it exited, or a note that it is empty."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        return f"its log is unreadable ({exc.strerror})"
    return lines[-1] if lines else "its log is empty"


def netem_problems(backend, target: str) -> list[str]:
    """Return why netem cannot delay ``target`` here (empty when it can)."""
    from .netem import netem_problems as problems

    return problems(backend, target)

"""Simulation "node-down": one or two validators of the localnet stop.

With one of four validators down the chain slows (its proposer turns cost a timeout_propose);
with two down it halts. The seed picks the variant, the validators and how they stop.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time

from ..chaos.faults import Kill, Stop
from ..errors import ConfigError, ProbeError
from .base import Simulation

__all__ = ["NodeDown"]

logger = logging.getLogger(__name__)

VARIANTS = {
    # name: (validators stopped, expected severity, what the learner should see)
    "one-down": (1, "SEV-3", "one validator stopped: the chain slows, its RPC refuses connections"),
    "two-down": (2, "SEV-1", "two validators stopped: no quorum, the chain halts"),
}
#: Ways the validators stop: like `docker stop` (SIGTERM, exit 0) or a crash (SIGKILL, exit 137).
STOP_MODES = ("stop", "kill")
#: Most blocks read back to measure the impact.
MAX_IMPACT_BLOCKS = 500


class NodeDown(Simulation):
    scenario_id = "node-down"
    title = "Node down: validators stopped"
    services = ("chain-rpc", "block-production", "rest-api", "transactions")

    def choose_variant(self, name: str | None) -> dict:
        validators = self.lab.validators()
        if name is None:
            name = self.rng.choice(sorted(VARIANTS))
        if name not in VARIANTS:
            raise ConfigError(f"variant={name!r} is unknown for node-down; use one of {', '.join(sorted(VARIANTS))}")
        count, severity, summary = VARIANTS[name]
        if count > len(validators):
            raise ConfigError(f"variant {name!r} stops {count} validators but the localnet has {len(validators)}")
        return {
            "name": name,
            "targets": sorted(self.rng.sample(validators, count)),
            "how": self.rng.choice(STOP_MODES),
            "expected_severity": severity,
            "expected_category": "container or orchestration",
            "summary": summary,
        }

    def apply_fault(self) -> None:
        self.height_at_injection = self._max_height() or 0
        self.normal_block_time = self._measure_block_time()
        self._heights: list[tuple[float, int]] = []
        # Journaled faults, so that `incidentlab cleanup` restarts the validators even if this
        # kernel dies mid-incident. The simulation records the injection itself, once.
        fault_class = Stop if self.variant["how"] == "stop" else Kill
        self.faults = [fault_class(self.lab, name, record=False).inject() for name in self.variant["targets"]]
        for name in self.variant["targets"]:
            logger.info("node-down fault: %s %s incident=%s", self.variant["how"], name, self.incident.id)

    def revert_fault(self) -> list[str]:
        undone = []
        for fault in getattr(self, "faults", []):
            was_running = self.lab.backend.inspect(fault.target)["Status"] == "running"
            fault.revert()
            if not was_running:
                undone.append(f"started {fault.target}")
        return undone

    def recovery_checks(self) -> list[dict]:
        from ..probes.rpc import probe_status

        samples = {name: probe_status(url, self.lab.probe_timeout) for name, url in self.lab.endpoints().items()}
        heights = [s["height"] for s in samples.values() if s["ok"]]
        best = max(heights, default=0)
        now = time.monotonic()
        self._heights.append((now, best))
        # Consensus messages add to timeout_commit, so allow several block times, and at least 1 s.
        window = max(1.0, 6 * self.lab.block_time)
        earlier = [h for t, h in self._heights if now - t >= window]
        checks = []
        for name in self.variant["targets"]:
            status = self.lab.backend.inspect(name)["Status"]
            checks.append(_check(f"{name} running", status == "running", status, "running"))
        down = sorted(name for name, s in samples.items() if not s["ok"])
        checks.append(_check("every RPC answers /status", not down, ", ".join(down) or "all answer", "all answer"))
        advanced = best - earlier[-1] if earlier else 0
        checks.append(_check("chain advancing", advanced >= 2,
                             f"+{advanced} blocks in {window:.1f} s" if earlier else "measuring",
                             f">= 2 blocks in {window:.1f} s"))
        lagging = sorted(n for n, s in samples.items() if s["ok"] and (s["height"] < best - 1 or s["catching_up"]))
        checks.append(_check("every node caught up", not lagging and not down,
                             ", ".join(lagging) or f"all at {best}" if not down else "not all answer",
                             "within 1 block of the best, catching_up false"))
        return checks

    def impact(self) -> dict:
        """Measure the incident from the chain: blocks produced, missed signatures, longest gap."""
        if self.injected_at is None:
            return {}
        client = self._any_client()
        if client is None:
            return {"note": "no validator answered, so the impact could not be measured"}
        # Only blocks committed after the fault count, and an ongoing halt counts up to now.
        start = self.height_at_injection + 1
        end = min(client.status().latest_block_height, start + MAX_IMPACT_BLOCKS)
        positions = self._positions(self.variant["targets"])
        missed, gaps, previous = 0, [], self.injected_at
        for height in range(start, end + 1):
            block = client.block(height)
            # An absent signature carries no address, as in CometBFT: its position says whose it is.
            signatures = block.last_commit_signatures
            missed += sum(1 for i in positions if i < len(signatures) and signatures[i].block_id_flag == 1)
            gaps.append((block.time - previous).total_seconds())
            previous = max(previous, block.time)
        recovered = self.incident.first("recovery_verified")
        until = recovered.time if recovered else _dt.datetime.now(_dt.timezone.utc)
        gaps.append((until - previous).total_seconds())
        normal = self.normal_block_time
        return {
            "validators stopped": f"{len(self.variant['targets'])} ({', '.join(self.variant['targets'])})",
            "blocks committed during the incident": max(0, end - start + 1),
            "signatures missed by the stopped validators": missed,
            "longest time without a new block (s)": round(max(gaps, default=0.0), 2),
            "normal time between blocks before the fault (s)": round(normal, 2) if normal else "not measured",
        }

    def _measure_block_time(self) -> float | None:
        """Return the mean interval of the last (up to 10) blocks before the fault, or None."""
        client = self._any_client()
        if client is None or self.height_at_injection < 2:
            return None
        first = max(1, self.height_at_injection - 10)
        span = client.block(self.height_at_injection).time - client.block(first).time
        return span.total_seconds() / (self.height_at_injection - first)

    # -- helpers ---------------------------------------------------------------------------

    def _max_height(self) -> int | None:
        client = self._any_client()
        return client.status().latest_block_height if client else None

    def _any_client(self):
        for name in self.lab.validators():
            if name in self.variant["targets"] and self.lab.backend.inspect(name)["Status"] != "running":
                continue
            client = self.lab.rpc_for(name)
            try:
                client.status()
            except ProbeError:
                continue
            return client
        return None

    def _positions(self, names: list[str]) -> list[int]:
        """Return the positions of the named validators in the validator set (the commit's order)."""
        network = self.lab.backend.network()
        return [network.validator(name).index for name in names]


def _check(name: str, ok: bool, observed: str, expected: str) -> dict:
    return {"check": name, "ok": bool(ok), "observed": observed, "expected": expected}

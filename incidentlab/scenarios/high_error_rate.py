"""Simulation "high-error-rate": the node behind the API gateway freezes and thaws in a loop.

While the node is frozen the gateway's upstream requests time out and clients get HTTP 504, so
the error ratio jumps, then falls back while it runs, again and again. The seed picks how long
each pause and each running stretch last.
"""

from __future__ import annotations

import logging
import time

import requests

from ..chaos.faults import PauseCycle
from ..errors import ConfigError
from .base import Simulation

__all__ = ["HighErrorRate"]

logger = logging.getLogger(__name__)

UPSTREAM = "virtengine-node-0"
VARIANTS = {
    # name: (seconds paused, seconds running per cycle, before time scaling). A pause must outlast
    # the gateway's 2 s upstream timeout to turn into 504s rather than slow 200s.
    "short-freezes": (4.0, 3.0),
    "long-freezes": (8.0, 2.0),
}
#: Cycles of the fault: enough to outlast the exercise, which ends it by remediation.
CYCLES = 200
#: Requests through the gateway that must all answer 200 for recovery.
VERIFY_REQUESTS = 10


class HighErrorRate(Simulation):
    scenario_id = "high-error-rate"
    title = "High error rate: the API gateway returns 5xx"
    services = ("api-gateway", "chain-rpc", "rest-api", "transactions")

    def choose_variant(self, name: str | None) -> dict:
        if name is None:
            name = self.rng.choice(sorted(VARIANTS))
        if name not in VARIANTS:
            raise ConfigError(f"variant={name!r} is unknown for high-error-rate; use one of {', '.join(sorted(VARIANTS))}")
        paused, running = VARIANTS[name]
        return {
            "name": name,
            "targets": [UPSTREAM],
            "paused": paused,
            "running": running,
            "expected_severity": "SEV-2",
            "expected_category": "container or orchestration",
            "summary": f"{UPSTREAM} is paused for {paused * self.lab.config.time_scale:g} s and runs for "
                       f"{running * self.lab.config.time_scale:g} s, in a loop",
        }

    def apply_fault(self) -> None:
        self.lab.gateway_url()  # raises a clear error when this localnet has no gateway
        self.counts_before = self._gateway_counts()
        self.fault = PauseCycle(self.lab, UPSTREAM, cycles=CYCLES, paused=self.variant["paused"],
                                running=self.variant["running"], record=False).inject()

    def revert_fault(self) -> list[str]:
        fault = getattr(self, "fault", None)
        if fault is None or fault.entry is None or fault.entry["state"] == "reverted":
            return []
        fault.revert()
        return [f"stopped the pause cycle on {UPSTREAM}"]

    def recovery_checks(self) -> list[dict]:
        from ..chaos.journal import Journal

        state = Journal(self.lab.config.home).read(self.fault.id)["state"]
        inspect = self.lab.backend.inspect(UPSTREAM)
        checks = [
            _check("pause cycle stopped", state == "reverted", state, "reverted"),
            _check(f"{UPSTREAM} running", inspect["Status"] == "running", inspect["Status"], "running"),
        ]
        codes = self._sample_gateway()
        failing = [code for code in codes if code != 200]
        checks.append(_check(f"{VERIFY_REQUESTS} gateway requests answer 200", not failing,
                             f"{len(codes) - len(failing)} of {len(codes)} answered 200", "all 200"))
        return checks

    def impact(self) -> dict:
        """Measure the incident from the gateway's own counters: requests and 5xx since the injection."""
        if not hasattr(self, "counts_before"):
            return {}
        after = self._gateway_counts()
        total = sum(after.values()) - sum(self.counts_before.values())
        errors = sum(v for code, v in after.items() if code.startswith("5")) - \
            sum(v for code, v in self.counts_before.items() if code.startswith("5"))
        by_code = {code: after.get(code, 0) - self.counts_before.get(code, 0) for code in sorted(after)}
        return {
            "requests served by the gateway (client load and probes)": int(total),
            "requests failed with 5xx": int(errors),
            "error ratio during the incident": round(errors / total, 3) if total else 0.0,
            "responses by status code": ", ".join(f"{code}: {int(n)}" for code, n in by_code.items() if n),
        }

    # -- helpers -----------------------------------------------------------------------------

    def _sample_gateway(self) -> list[int]:
        url = self.lab.gateway_url() + "/rpc/status"
        codes = []
        with requests.Session() as session:
            for _ in range(VERIFY_REQUESTS):
                try:
                    codes.append(session.get(url, timeout=max(1.0, 4 * self.lab.probe_timeout)).status_code)
                except requests.RequestException:
                    codes.append(0)
                time.sleep(self.lab.block_time / 2)
        return codes

    def _gateway_counts(self) -> dict[str, float]:
        """Return the gateway's http_requests_total summed by status code, read from its /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        url = next(s["metrics"] for s in self.lab.status()["services"] if s.get("kind") == "gateway")
        counts: dict[str, float] = {}
        text = requests.get(url, timeout=max(1.0, self.lab.probe_timeout)).text
        for family in text_string_to_metric_families(text):
            if family.name != "http_requests":
                continue
            for sample in family.samples:
                if sample.name == "http_requests_total":
                    code = sample.labels.get("code", "?")
                    counts[code] = counts.get(code, 0.0) + sample.value
        return counts


def _check(name: str, ok: bool, observed: str, expected: str) -> dict:
    return {"check": name, "ok": bool(ok), "observed": observed, "expected": expected}

"""Simulation "veid-scoring-anomaly": a bad configuration revision of the VEID scoring service.

A deploy changes the preprocessing (the divisor, the channel order) or points at a model file
whose hash does not match, so verifications are rejected or fail while the chain stays healthy.
The seed picks the variant. The learner finds the revision and rolls it back.
"""

from __future__ import annotations

import logging
import threading

from ..chaos.veid_fault import VeidBadRevision
from ..errors import ConfigError, IncidentLabError
from ..veid import SERVICE_NAME
from .base import Simulation

__all__ = ["VeidScoringAnomaly"]

logger = logging.getLogger(__name__)

VARIANTS = {
    # name: (expected root-cause category, what the learner should see). The seed draws one with
    # rng.choices over this order, which gives seed 7 the divisor change and seed 2 the channel swap.
    "tampered-model": ("configuration", "a revision loads a model file whose SHA-256 does not match the manifest"),
    "channel-order": ("data pipeline", "a revision feeds the channels as BGR: skin looks blue and most captures fail"),
    "divisor-1000": ("data pipeline", "a revision divides pixels by 1000: captures look dark and scores collapse"),
}
#: Score average below which the VEID probe records a failure (the VeidScoreDrop alert's threshold).
SCORE_ALERT = 0.6
#: Verifications scored by the current revision before recovery is judged. Scores spread from
#: 0 to 1 (standard deviation about 0.35), so the mean of 40 has a standard error near 0.055.
VERIFY_SAMPLES = 40
#: Largest gap between the recent mean score and the baseline's that counts as recovered,
#: about 2.7 standard errors of the mean of VERIFY_SAMPLES scores.
MEAN_TOLERANCE = 0.15


class VeidScoringAnomaly(Simulation):
    scenario_id = "veid-scoring-anomaly"
    title = "VEID scoring anomaly: verifications rejected"
    services = ("veid-scoring", "identity-verification", "veid-enrollment", "chain-rpc", "block-production",
                "transactions")

    def choose_variant(self, name: str | None) -> dict:
        if name is None:
            name = self.rng.choices(list(VARIANTS))[0]
        if name not in VARIANTS:
            raise ConfigError(f"variant={name!r} is unknown for veid-scoring-anomaly; "
                              f"use one of {', '.join(sorted(VARIANTS))}")
        category, summary = VARIANTS[name]
        return {"name": name, "targets": [SERVICE_NAME], "expected_severity": "SEV-2",
                "expected_category": category, "summary": summary}

    def apply_fault(self) -> None:
        self.counts_before = self._counts()
        self.fault = VeidBadRevision(self.lab, SERVICE_NAME, variant=self.variant["name"], record=False).inject()
        logger.info("veid fault: %s deployed as %s incident=%s", self.variant["name"], self.fault.revision["id"],
                    self.incident.id)

    def revert_fault(self) -> list[str]:
        fault = getattr(self, "fault", None)
        if fault is None or fault.entry is None or fault.entry["state"] == "reverted":
            return []
        fixed = self.lab.veid.current()["config"] == fault.good["config"]
        fault.revert()
        return [] if fixed else [f"rolled {SERVICE_NAME} back to {fault.good['id']}"]

    def remediation_actions(self) -> dict:
        actions = super().remediation_actions()
        actions["rollback"] = lambda target=None, **options: self.lab.veid.rollback(**options)
        actions["deploy"] = lambda target=None, **options: self.lab.veid.deploy(**options)
        return actions

    def recovery_checks(self) -> list[dict]:
        veid = self.lab.veid
        current = veid.current()
        good = self.fault.good
        changed = [row["setting"] for row in veid.diff(good["id"], current["id"]).to_dict("records")]
        model = veid.model_check()
        checks = [
            _check(f"configuration equals {good['id']}", not changed,
                   f"{current['id']} differs in {', '.join(changed)}" if changed else f"{current['id']} matches",
                   f"the settings of {good['id']}"),
            _check("model check passes", bool(model["ok"].all()),
                   ", ".join(model.loc[~model["ok"], "check"]) or "all checks pass", "all checks pass"),
        ]
        return checks + self._score_checks(current["id"])

    def _score_checks(self, revision: str) -> list[dict]:
        """Return the mean-score and drift checks over the verifications scored by ``revision``."""
        from ..veid.stats import DRIFT_ALPHA, drift_test, load_baseline

        scores = self.lab.veid.verifications(revision=revision)["score"].dropna().tolist()
        if len(scores) < VERIFY_SAMPLES:
            waiting = f"{len(scores)} of {VERIFY_SAMPLES} verifications scored by {revision}"
            return [_check("mean score near the baseline", False, waiting, f"{VERIFY_SAMPLES} verifications"),
                    _check("drift test passes", False, waiting, f"{VERIFY_SAMPLES} verifications")]
        baseline = load_baseline()
        mean = sum(scores) / len(scores)
        drift = drift_test(scores, baseline)
        return [
            _check("mean score near the baseline", abs(mean - baseline["score_mean"]) <= MEAN_TOLERANCE,
                   f"{mean:.3f} over {len(scores)} verifications", f"{baseline['score_mean']:.3f} ± {MEAN_TOLERANCE}"),
            _check("drift test passes", not drift.drift, f"p = {drift.pvalue:.3g}", f"p >= {DRIFT_ALPHA}"),
        ]

    def verify(self, timeout: float | None = None):
        """Poll the recovery checks (see Simulation.verify); the default timeout leaves the background
        stream time to score VERIFY_SAMPLES verifications three times over."""
        from ..localnet.veid_service import stream_rate

        if timeout is None:
            rate = self.lab.backend.network().service(SERVICE_NAME).options["rate"]
            needed = VERIFY_SAMPLES / stream_rate(rate, self.lab.config.time_scale)
            timeout = max(15.0, 3 * needed)
        return super().verify(timeout)

    def impact(self) -> dict:
        """Measure the incident from the service's counters and its log of verifications under the bad revision."""
        if not hasattr(self, "counts_before"):
            return {}
        after = self._counts()
        delta = {key: after.get(key, 0.0) - self.counts_before.get(key, 0.0) for key in after}
        bad = self.lab.veid.verifications(revision=self.fault.revision["id"])
        scored = bad["score"].dropna()
        from ..veid.stats import load_baseline

        return {
            "verifications since the fault": int(sum(delta.values())),
            "approved / rejected / failed since the fault": f"{int(delta.get('approved', 0))} / "
                                                             f"{int(delta.get('rejected', 0))} / {int(delta.get('error', 0))}",
            f"verifications handled by the bad revision {self.fault.revision['id']}": len(bad),
            "mean score under the bad revision": round(float(scored.mean()), 3) if len(scored) else "no scores",
            "baseline mean score": load_baseline()["score_mean"],
        }

    def close(self) -> list[str]:
        stopping = getattr(self, "_veid_stopping", None)
        if stopping is not None:
            stopping.set()
        return super().close()

    # -- probes ------------------------------------------------------------------------------

    def _start_probes(self) -> None:
        super()._start_probes()
        self._veid_stopping = threading.Event()
        self._veid_errors = None
        threading.Thread(target=self._probe_veid, name="veid-probe", daemon=True).start()

    def _probe_veid(self) -> None:
        """Record the first VEID failure: the score average below the alert threshold, or new scoring errors."""
        interval = max(0.2, min(2.0, self.lab.block_time))
        while not self._veid_stopping.wait(interval):
            if not self.active or self.incident is None:
                continue
            try:
                failure = self._veid_failure()
            except (IncidentLabError, OSError, ValueError) as exc:
                failure = f"metrics unreadable: {exc}"
            if failure is None:
                continue
            with self._lock:
                if self.incident.first("probe_failed") is None:
                    self.incident.add_event("probe_failed", "probe", f"{SERVICE_NAME} ({failure})",
                                            target=SERVICE_NAME, error=failure)
            self._veid_stopping.set()

    def _veid_failure(self) -> str | None:
        counts = self._counts()
        errors = counts.get("error", 0.0)
        previous, self._veid_errors = self._veid_errors, errors
        if previous is not None and errors > previous:
            return f"{int(errors - previous)} new scoring errors"
        average = self.lab.veid.metric("virtengine_veid_scoring_score_avg")
        return f"score average {average:.3f} below {SCORE_ALERT}" if average < SCORE_ALERT else None

    def _counts(self) -> dict[str, float]:
        """Return virtengine_veid_scoring_requests_total by status."""
        frame = self.lab.veid.metrics()
        rows = frame[frame["name"] == "virtengine_veid_scoring_requests_total"]
        return {labels.removeprefix("status="): value for labels, value in zip(rows["labels"], rows["value"])}


def _check(name: str, ok: bool, observed: str, expected: str) -> dict:
    return {"check": name, "ok": bool(ok), "observed": observed, "expected": expected}

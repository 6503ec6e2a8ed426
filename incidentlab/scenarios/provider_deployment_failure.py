"""Simulation "provider-deployment-failure": the provider's cluster stops running new lease pods.

Leases and rollouts keep arriving. The seed picks the hidden cause: a quota tightened below
what the leases need (FailedCreate at admission), nodes without room (pods Pending with
FailedScheduling), or a rollout whose containers set no requests under a quota that needs them.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from ..chaos.cluster_faults import BATCH_DEPLOYMENT, BATCH_NAMESPACE, CapacityShort, RequestsMissing, RestrictiveQuota
from ..errors import ConfigError, ScenarioError
from .base import Simulation

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ProviderDeploymentFailure", "TENANT_QUOTA", "BASELINE_HARD"]

logger = logging.getLogger(__name__)

TENANT_QUOTA = "tenant-quota"
#: The tenant namespace's quota before the incident: room for every lease the workload brings.
BASELINE_HARD = {"pods": "30", "requests.cpu": "6", "requests.memory": "12Gi", "limits.cpu": "12",
                 "limits.memory": "24Gi"}
#: Leases running before the fault, each with two replicas of 250m cpu and 256Mi memory.
BASELINE_LEASES = ("lease-akash-web", "lease-inference-api", "lease-postgres")
VARIANTS = {
    # name: (expected severity, root-cause category, what the learner should find)
    "quota-exceeded": ("SEV-2", "configuration",
                       "the tenant quota's cpu and memory limits were cut to what runs now: new pods fail admission"),
    "capacity-short": ("SEV-2", "resource constraint",
                       "a batch workload filled every node's cpu: new pods stay Pending, FailedScheduling"),
    "requests-missing": ("SEV-3", "configuration",
                         "a lease was rolled out without resource requests under a quota that needs them"),
}
#: Seconds, before time scaling, that the baseline leases have to become available.
BASELINE_TIMEOUT = 30.0


class ProviderDeploymentFailure(Simulation):
    scenario_id = "provider-deployment-failure"
    title = "Provider deployment failure: lease pods are not running"
    services = ("lease-provisioning", "running-leases", "provider-cluster", "chain")

    def choose_variant(self, name: str | None) -> dict:
        if name is None:
            name = self.rng.choice(sorted(VARIANTS))
        if name not in VARIANTS:
            raise ConfigError(f"variant={name!r} is unknown for {self.scenario_id}; "
                              f"use one of {', '.join(sorted(VARIANTS))}")
        severity, category, summary = VARIANTS[name]
        targets = {"quota-exceeded": [TENANT_QUOTA], "capacity-short": [BATCH_DEPLOYMENT],
                   "requests-missing": [self.rng.choice(BASELINE_LEASES)]}[name]
        return {"name": name, "targets": targets, "expected_severity": severity, "expected_category": category,
                "summary": summary}

    # -- the fault -------------------------------------------------------------------------------

    def apply_fault(self) -> None:
        from ..backends.kubernetes_workload import LeaseGenerator

        cluster = self.lab.cluster
        self._prepare_baseline(cluster)
        self.faults = [self._fault_for(self.variant["name"]).inject()]
        self.unfulfilled_max = 0
        self.generator = LeaseGenerator(cluster, seed=self.seed, time_scale=self.lab.config.time_scale,
                                        on_tick=self._on_leases).start()
        logger.info("provider fault %s injected incident=%s targets=%s", self.variant["name"], self.incident.id,
                    self.variant["targets"])

    def revert_fault(self) -> list[str]:
        generator = getattr(self, "generator", None)
        if generator is not None:
            generator.stop()
        undone = []
        for fault in getattr(self, "faults", []):
            if fault.entry is not None and fault.entry["state"] != "reverted":
                fault.revert()
                undone.append(f"{fault.kind}: {fault.entry.get('note', '')}")
        return undone

    def remediation_actions(self) -> dict[str, Callable[..., Any]]:
        """Return the lab's target actions plus the cluster remedies an answers file may replay."""
        actions = super().remediation_actions()
        cluster = lambda: self.lab.cluster  # noqa: E731 - connected only when an action runs
        actions.update({
            "replace_quota": lambda target, **options: cluster().replace_quota(target, **options),
            "apply_quota": lambda target, **options: cluster().apply_quota(target, **options),
            "delete_quota": lambda target, **options: cluster().delete_quota(target, **options),
            "scale": lambda target, **options: cluster().scale(target, **options),
            "set_resources": lambda target, **options: cluster().set_resources(target, **options),
            "delete_deployment": lambda target, **options: cluster().delete_deployment(target, **options),
        })
        return actions

    def lease_history(self, count: int = 6, interval: float | None = None) -> "pd.DataFrame":
        """Sample the leases ``count`` times, ``interval`` seconds apart (default 1 s, time-scaled).

        Returns one row per sample: time, leases, fulfilled, unfulfilled (names) and pods Pending,
        like running ``kubectl get deployments`` in a loop.
        """
        import pandas as pd

        from ..backends.kubernetes_workload import lease_status

        interval = max(0.1, self.lab.config.time_scale) if interval is None else interval
        rows = []
        for index in range(count):
            if index:
                time.sleep(interval)
            leases = lease_status(self.lab.cluster)
            pods = self.lab.cluster.pods()
            unfulfilled = sorted(lease["lease"] for lease in leases if not lease["fulfilled"])
            rows.append({"time": _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3],
                         "leases": len(leases), "fulfilled": len(leases) - len(unfulfilled),
                         "unfulfilled": ", ".join(unfulfilled),
                         "pods Pending": int((pods["STATUS"] == "Pending").sum())})
        return pd.DataFrame(rows)

    # -- verification and impact ---------------------------------------------------------------------

    def recovery_checks(self) -> list[dict]:
        from ..backends.kubernetes_workload import lease_status

        cluster = self.lab.cluster
        leases = lease_status(cluster)
        unfulfilled = [lease["lease"] for lease in leases if not lease["fulfilled"]]
        pods = cluster.pods()
        pending = pods[pods["STATUS"] != "Running"]["NAME"].tolist()
        failures = [lease["lease"] for lease in leases if lease["failure"]]
        return [
            _check("every lease deployment available", not unfulfilled,
                   ", ".join(unfulfilled) or f"{len(leases)} of {len(leases)} ready", "all ready and up to date"),
            _check("every lease pod Running", not pending, ", ".join(pending[:5]) or f"{len(pods)} Running",
                   "no pod Pending"),
            _check("no ReplicaFailure condition", not failures, ", ".join(failures) or "none", "none"),
        ]

    def impact(self) -> dict:
        """Measure the incident from the cluster: leases unfulfilled, rejected pod creations, unschedulable pods."""
        if self.injected_at is None:
            return {}
        cluster = self.lab.cluster
        events = cluster.events(warnings_only=True)
        failed_create = int(events.loc[events["REASON"] == "FailedCreate", "COUNT"].sum())
        failed_scheduling = int(events.loc[events["REASON"] == "FailedScheduling", "COUNT"].sum())
        arrivals = self.generator.frame() if getattr(self, "generator", None) else None
        return {
            "cause (variant)": self.variant["name"],
            "most leases unfulfilled at once": self.unfulfilled_max,
            "pod creations rejected at admission (FailedCreate)": failed_create,
            "scheduling attempts failed (FailedScheduling)": failed_scheduling,
            "lease arrivals during the incident": 0 if arrivals is None else len(arrivals),
        }

    # -- helpers ------------------------------------------------------------------------------------

    def _prepare_baseline(self, cluster) -> None:
        """Create the tenant quota and the baseline leases (not recorded as actions), and wait until they run."""
        from ..backends.kubernetes_workload import lease_status

        with cluster.unrecorded():
            cluster.apply_quota(TENANT_QUOTA, BASELINE_HARD)
            existing = {lease["lease"] for lease in lease_status(cluster)}
            for name in BASELINE_LEASES:
                if name not in existing:
                    cluster.deploy_lease(name, replicas=2, cpu="250m", memory="256Mi")
        timeout = max(5.0, BASELINE_TIMEOUT * self.lab.config.time_scale)
        deadline = time.monotonic() + timeout
        while not all(lease["fulfilled"] for lease in lease_status(cluster)):
            if time.monotonic() > deadline:
                raise ScenarioError(f"the baseline leases did not become available within {timeout:.1f} s; "
                                    "inspect them with lab.cluster.deployments() and lab.cluster.events()")
            time.sleep(0.1)

    def _fault_for(self, variant: str):
        if variant == "quota-exceeded":
            used = self.lab.cluster.quota(TENANT_QUOTA)["used"]
            # Only the limits are cut, as in an operator's "tighten the tenant's limits" change.
            hard = dict(BASELINE_HARD, **{key: used[key] for key in ("limits.cpu", "limits.memory")})
            return RestrictiveQuota(self.lab, quota=TENANT_QUOTA, hard=hard, record=False)
        if variant == "capacity-short":
            return CapacityShort(self.lab, BATCH_NAMESPACE, record=False)
        return RequestsMissing(self.lab, deployment=self.variant["targets"][0], record=False)

    def _on_leases(self, leases: list[dict]) -> None:
        unfulfilled = [lease for lease in leases if not lease["fulfilled"]]
        self.unfulfilled_max = max(self.unfulfilled_max, len(unfulfilled))
        if not unfulfilled or not self.active or self.incident is None:
            return
        with self._lock:
            if self.incident.first("probe_failed") is None:
                first = unfulfilled[0]
                self.incident.add_event("probe_failed", "probe", f"lease {first['lease']} unfulfilled "
                                        f"({first['ready']}/{first['desired']} ready)",
                                        time=_dt.datetime.now(_dt.timezone.utc), target=first["lease"],
                                        error=first["failure"] or "not ready")


def _check(name: str, ok: bool, observed: str, expected: str) -> dict:
    return {"check": name, "ok": bool(ok), "observed": observed, "expected": expected}

"""The provider's workload: new leases and rollouts keep arriving, seeded, at a time-scaled rate.

Each arrival goes through the official client to the cluster, so a restrictive quota or a
full node bites the way it would for tenants of a real provider.
"""

from __future__ import annotations

import datetime as _dt
import logging
import random
import threading
from typing import Callable

__all__ = ["LeaseGenerator", "lease_status", "DEFAULT_INTERVAL", "DEFAULT_MAX_LEASES"]

logger = logging.getLogger(__name__)

#: Mean seconds between two arrivals (a new lease or a rollout), before time scaling.
DEFAULT_INTERVAL = 3.0
#: Leases the generator keeps at most; past it, arrivals are rollouts of existing leases.
DEFAULT_MAX_LEASES = 8
#: Annotation of the pod template that a rollout changes, as `kubectl rollout restart` does.
ROLLOUT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
LEASE_SIZES = (("250m", "256Mi"), ("250m", "512Mi"))


def lease_status(cluster) -> list[dict]:
    """Return one dict per lease Deployment: lease, desired, ready, updated, fulfilled, failure reason."""
    from .kubernetes import LEASE_LABEL

    leases = []
    for item in cluster.apps.list_namespaced_deployment(cluster.namespace, label_selector=LEASE_LABEL).items:
        from kubernetes.client import V1DeploymentStatus

        status, desired = item.status or V1DeploymentStatus(), item.spec.replicas
        conditions = status.conditions or []
        failure = next((c.reason for c in conditions if c.type == "ReplicaFailure" and c.status == "True"), "")
        ready, updated = status.ready_replicas or 0, status.updated_replicas or 0
        leases.append({"lease": item.metadata.name, "desired": desired, "ready": ready, "updated": updated,
                       "fulfilled": ready >= desired and updated >= desired, "failure": failure})
    return leases


class LeaseGenerator:
    """A background thread that deploys new leases and rolls out existing ones.

    Takes the ProviderCluster, the seed, the time scale, the mean interval in seconds before
    scaling, the lease cap and ``on_tick(leases)``, called after each arrival with lease_status().
    """

    def __init__(self, cluster, *, seed: int, time_scale: float, interval: float = DEFAULT_INTERVAL,
                 max_leases: int = DEFAULT_MAX_LEASES, on_tick: Callable[[list[dict]], None] | None = None):
        self.cluster = cluster
        self.rng = random.Random(f"leases:{seed}")
        self.interval = interval * time_scale
        self.max_leases = max_leases
        self.on_tick = on_tick
        self.arrivals: list[dict] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "LeaseGenerator":
        """Start the arrivals on a daemon thread; return self."""
        self._thread = threading.Thread(target=self._run, name="lease-generator", daemon=True)
        self._thread.start()
        logger.info("lease generator started interval=%.2fs max_leases=%d namespace=%s",
                    self.interval, self.max_leases, self.cluster.namespace)
        return self

    def stop(self) -> None:
        """Stop the arrivals and wait for the thread; safe to call twice."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def step(self) -> dict:
        """Make one arrival now: a new lease while under the cap, else a rollout; return what it did."""
        from kubernetes.client.exceptions import ApiException

        leases = lease_status(self.cluster)
        names = {lease["lease"] for lease in leases}
        now = _dt.datetime.now(_dt.timezone.utc)
        try:
            if len(leases) < self.max_leases:
                name = next(f"lease-{n:04d}" for n in range(1, 10_000) if f"lease-{n:04d}" not in names)
                cpu, memory = self.rng.choice(LEASE_SIZES)
                self.cluster.deploy_lease(name, replicas=self.rng.choice((1, 2)), cpu=cpu, memory=memory)
                arrival = {"time": now, "kind": "new lease", "lease": name, "ok": True}
            else:
                name = self.rng.choice(sorted(names))
                self._rollout(name, now)
                arrival = {"time": now, "kind": "rollout", "lease": name, "ok": True}
        except ApiException as exc:
            logger.warning("lease arrival failed: HTTP %s %s", exc.status, exc.reason)
            arrival = {"time": now, "kind": "error", "lease": "", "ok": False, "error": f"HTTP {exc.status}"}
        self.arrivals.append(arrival)
        return arrival

    def frame(self):
        """Return the arrivals so far as a table: time, kind, lease, ok."""
        import pandas as pd

        return pd.DataFrame(self.arrivals, columns=["time", "kind", "lease", "ok"])

    def _rollout(self, name: str, now: _dt.datetime) -> None:
        deployment = self.cluster.apps.read_namespaced_deployment(name, self.cluster.namespace)
        template = deployment.spec.template
        template.metadata.annotations = {**(template.metadata.annotations or {}),
                                         ROLLOUT_ANNOTATION: now.isoformat(timespec="seconds")}
        self.cluster.apps.replace_namespaced_deployment(name, self.cluster.namespace, deployment)

    def _run(self) -> None:
        while not self._stopping.wait(self.rng.uniform(0.5, 1.5) * self.interval):
            try:
                self.step()
                if self.on_tick is not None:
                    self.on_tick(lease_status(self.cluster))
            except Exception:  # the generator must outlive a cluster restart; log and go on
                logger.exception("lease generator step failed")

"""Faults in the provider's cluster: a restrictive quota, node capacity short, containers without requests.

Each fault journals a data undo before it changes the cluster, through the official
``kubernetes`` client, so ``incidentlab cleanup`` can restore the cluster after a crash.
Everything a fault creates carries the label ``incidentlab.io/fault=<fault id>``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, FaultError
from .faults import Fault, register
from .journal import Journal, new_fault_id

if TYPE_CHECKING:
    from ..lab import Lab

__all__ = ["ClusterFault", "RestrictiveQuota", "CapacityShort", "RequestsMissing", "run_cluster_undo", "FAULT_LABEL"]

logger = logging.getLogger(__name__)

FAULT_LABEL = "incidentlab.io/fault"
#: Namespace of the batch workload that the capacity fault starts beside the leases.
BATCH_NAMESPACE = "virtengine-batch"
BATCH_DEPLOYMENT = "batch-reservation"
#: CPU request of each batch pod: the capacity fault fills every node in steps of this size.
BATCH_POD_CPU = "250m"


class ClusterFault(Fault):
    """A fault whose target is a namespace of the provider's cluster (default ``virtengine-workloads``).

    Raises ConfigError when the namespace may not be used by the lab.
    """

    def __init__(self, lab: "Lab", target: str | None = None, *, dry_run: bool = False, record: bool = True,
                 detached: bool = False) -> None:
        self.cluster = lab.cluster
        self.lab = lab
        self.target = target or self.cluster.namespace
        self.dry_run = dry_run
        self.record = record
        self.detached = detached
        self.id = new_fault_id(self.kind)
        self.journal = Journal(lab.config.home)
        self.entry: dict | None = None
        if not dry_run:
            self.cluster.ensure_namespace(self.target)

    def _step(self, op: str, **data: Any) -> dict:
        """Return an undo step that names how to reach the cluster again without this object."""
        kubeconfig = str(self.cluster.kubeconfig) if self.cluster.kubeconfig else None
        return {"op": "cluster", "action": op, "context": self.cluster.context, "kubeconfig": kubeconfig,
                "namespace": self.target, "fault": self.id, **data}


@register("quota-restrict")
class RestrictiveQuota(ClusterFault):
    """Tighten the ResourceQuota ``quota`` to ``hard`` (default: what its pods use now), so new pods are rejected.

    A quota already there is snapshotted and restored on revert; a new one is labelled and deleted.
    """

    def __init__(self, lab: "Lab", target: str | None = None, *, quota: str = "tenant-quota",
                 hard: dict | None = None, **options: Any) -> None:
        super().__init__(lab, target, **options)
        self.quota = quota
        self.hard = dict(hard) if hard else None
        self.snapshot: dict | None = None

    def params(self) -> dict:
        return {"quota": self.quota, "hard": self.hard}

    def plan(self) -> list[str]:
        return [f"set ResourceQuota {self.target}/{self.quota} hard to {self.hard or 'its current usage'}",
                "on revert: restore the quota's previous hard limits or delete it"]

    def undo_steps(self) -> list[dict]:
        return [self._step("restore_quota", name=self.quota, snapshot=self.snapshot)]

    def inject(self) -> "Fault":
        from kubernetes.client.exceptions import ApiException

        try:
            found = self.cluster.core.read_namespaced_resource_quota(self.quota, self.target)
        except ApiException as exc:
            if exc.status != 404:
                raise FaultError(f"cannot read ResourceQuota {self.target}/{self.quota}: {exc.reason}") from exc
            found = None
        if found is not None:
            self.snapshot = {"hard": dict(found.spec.hard or {}), "labels": dict(found.metadata.labels or {})}
            self.hard = self.hard or _tight(found.status.used or {}, found.spec.hard or {})
        elif not self.hard:
            raise ConfigError(f"ResourceQuota {self.target}/{self.quota} does not exist; pass hard= with the "
                              "limits to create it with, like hard={'pods': '0'}")
        return super().inject()

    def apply(self) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = self.cluster.core
        if self.snapshot is None:
            body = client.V1ResourceQuota(metadata=client.V1ObjectMeta(name=self.quota, labels={FAULT_LABEL: self.id}),
                                          spec=client.V1ResourceQuotaSpec(hard=self.hard))
            core.create_namespaced_resource_quota(self.target, body)
            return
        try:
            quota = core.read_namespaced_resource_quota(self.quota, self.target)
            quota.spec.hard = dict(self.hard)
            core.replace_namespaced_resource_quota(self.quota, self.target, quota)
        except ApiException as exc:
            raise FaultError(f"cannot replace ResourceQuota {self.target}/{self.quota}: {exc.reason}") from exc


@register("capacity-short")
class CapacityShort(ClusterFault):
    """Fill the nodes' allocatable cpu with a batch Deployment, so new pods stay Pending (FailedScheduling).

    The batch workload runs in ``virtengine-batch``, outside the leases' quota; revert deletes it.
    """

    def __init__(self, lab: "Lab", target: str | None = None, **options: Any) -> None:
        super().__init__(lab, target or BATCH_NAMESPACE, **options)
        self.replicas = 0

    def params(self) -> dict:
        return {"deployment": BATCH_DEPLOYMENT, "replicas": self.replicas, "cpu_per_pod": BATCH_POD_CPU}

    def plan(self) -> list[str]:
        return [f"deploy {self.target}/{BATCH_DEPLOYMENT} with enough {BATCH_POD_CPU} pods to fill every node's cpu",
                f"on revert: delete {BATCH_DEPLOYMENT}"]

    def undo_steps(self) -> list[dict]:
        return [self._step("delete_labelled", kind="deployments")]

    def apply(self) -> None:
        from ..localnet.cluster.quantity import parse
        from .cluster_faults_support import free_cpu_per_node, batch_deployment

        step = parse("cpu", BATCH_POD_CPU)
        self.replicas = sum(free // step for free in free_cpu_per_node(self.cluster).values())
        self.entry["params"] = self.params()
        self.journal.write(self.entry)
        self.cluster.apps.create_namespaced_deployment(
            self.target, batch_deployment(BATCH_DEPLOYMENT, self.replicas, BATCH_POD_CPU, {FAULT_LABEL: self.id}))


@register("requests-missing")
class RequestsMissing(ClusterFault):
    """Roll out ``deployment`` with containers that set no requests or limits, under a quota that needs them.

    The new ReplicaSet's pods are rejected (``must specify requests.cpu ...``); revert restores the resources.
    """

    def __init__(self, lab: "Lab", target: str | None = None, *, deployment: str, **options: Any) -> None:
        super().__init__(lab, target, **options)
        self.deployment = deployment
        self.snapshot: dict = {}

    def params(self) -> dict:
        return {"deployment": self.deployment}

    def plan(self) -> list[str]:
        return [f"replace {self.target}/{self.deployment} with containers that set no resources",
                "on revert: restore each container's resources"]

    def undo_steps(self) -> list[dict]:
        return [self._step("restore_resources", name=self.deployment, snapshot=self.snapshot)]

    def inject(self) -> "Fault":
        deployment = self.cluster.apps.read_namespaced_deployment(self.deployment, self.target)
        self.snapshot = {c.name: self.cluster.api_client.sanitize_for_serialization(c.resources) or {}
                         for c in deployment.spec.template.spec.containers}
        return super().inject()

    def apply(self) -> None:
        from kubernetes import client

        deployment = self.cluster.apps.read_namespaced_deployment(self.deployment, self.target)
        for container in deployment.spec.template.spec.containers:
            container.resources = client.V1ResourceRequirements()
        self.cluster.apps.replace_namespaced_deployment(self.deployment, self.target, deployment)


def run_cluster_undo(step: dict) -> str:
    """Run one cluster undo step from the journal; return what was done, starting with FAILED when it was not."""
    from .cluster_faults_support import connect, restore_quota, restore_resources, delete_labelled

    cluster = connect(step)
    actions = {"restore_quota": restore_quota, "delete_labelled": delete_labelled,
               "restore_resources": restore_resources}
    return actions[step["action"]](cluster, step)


def _tight(used: dict, hard: dict) -> dict:
    """Return hard limits equal to the current usage of each resource, so that any new pod exceeds them."""
    return {resource: used.get(resource, "0") for resource in hard}

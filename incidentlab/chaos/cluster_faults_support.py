"""Helpers of the cluster faults: reaching the cluster from a journal step, and each undo with its check."""

from __future__ import annotations

import logging

__all__ = ["connect", "restore_quota", "delete_labelled", "restore_resources", "free_cpu_per_node", "batch_deployment"]

logger = logging.getLogger(__name__)


def connect(step: dict):
    """Return a ProviderCluster for the context and kubeconfig that a journal step names."""
    from kubernetes import config as kube_config

    from ..backends.kubernetes import ProviderCluster

    api_client = kube_config.new_client_from_config(config_file=step.get("kubeconfig"), context=step["context"])
    return ProviderCluster(api_client, context=step["context"], namespace=step["namespace"])


def restore_quota(cluster, step: dict) -> str:
    """Put the quota's snapshotted hard limits back, or delete the quota the fault created; then verify."""
    from kubernetes.client.exceptions import ApiException

    from .cluster_faults import FAULT_LABEL

    name, namespace, snapshot = step["name"], step["namespace"], step.get("snapshot")
    core = cluster.core
    try:
        quota = core.read_namespaced_resource_quota(name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        quota = None
    if snapshot is None:
        if quota is None or (quota.metadata.labels or {}).get(FAULT_LABEL) != step["fault"]:
            return f"quota {namespace}/{name} already gone"
        core.delete_namespaced_resource_quota(name, namespace)
        return f"deleted quota {namespace}/{name}"
    if quota is None:
        from kubernetes import client

        body = client.V1ResourceQuota(metadata=client.V1ObjectMeta(name=name, labels=snapshot["labels"] or None),
                                      spec=client.V1ResourceQuotaSpec(hard=snapshot["hard"]))
        core.create_namespaced_resource_quota(namespace, body)
    else:
        quota.spec.hard = dict(snapshot["hard"])
        core.replace_namespaced_resource_quota(name, namespace, quota)
    restored = core.read_namespaced_resource_quota(name, namespace).spec.hard or {}
    if dict(restored) != dict(snapshot["hard"]):
        return f"FAILED: quota {namespace}/{name} has hard {dict(restored)}, expected {snapshot['hard']}"
    return f"restored quota {namespace}/{name} hard to {snapshot['hard']}"


def delete_labelled(cluster, step: dict) -> str:
    """Delete the Deployments labelled with the fault id, then verify none is left."""
    from .cluster_faults import FAULT_LABEL

    selector = f"{FAULT_LABEL}={step['fault']}"
    namespace = step["namespace"]
    found = cluster.apps.list_namespaced_deployment(namespace, label_selector=selector).items
    for deployment in found:
        cluster.apps.delete_namespaced_deployment(deployment.metadata.name, namespace)
    if cluster.apps.list_namespaced_deployment(namespace, label_selector=selector).items:
        return f"FAILED: deployments labelled {selector} remain in {namespace}"
    return f"deleted {len(found)} deployment(s) labelled {selector} in {namespace}"


def restore_resources(cluster, step: dict) -> str:
    """Put each container's snapshotted resources back into the Deployment; then verify."""
    from kubernetes.client.exceptions import ApiException

    name, namespace, snapshot = step["name"], step["namespace"], step.get("snapshot") or {}
    try:
        deployment = cluster.apps.read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return f"deployment {namespace}/{name} is gone; nothing to restore"
        raise
    body = cluster.api_client.sanitize_for_serialization(deployment)
    for container in body["spec"]["template"]["spec"]["containers"]:
        if container["name"] in snapshot:
            container["resources"] = snapshot[container["name"]]
    cluster.apps.replace_namespaced_deployment(name, namespace, body)
    after = cluster.api_client.sanitize_for_serialization(cluster.apps.read_namespaced_deployment(name, namespace))
    wrong = [c["name"] for c in after["spec"]["template"]["spec"]["containers"]
             if c["name"] in snapshot and (c.get("resources") or {}) != snapshot[c["name"]]]
    if wrong:
        return f"FAILED: containers {wrong} of {namespace}/{name} still differ from their snapshot"
    return f"restored the resources of {namespace}/{name}"


def free_cpu_per_node(cluster) -> dict[str, int]:
    """Return each schedulable node's allocatable cpu minus what its pods request, in millicores."""
    from ..localnet.cluster.quantity import parse

    pods = cluster.core.list_pod_for_all_namespaces().items
    free = {}
    for node in cluster.core.list_node().items:
        if node.spec and node.spec.unschedulable:
            continue
        total = parse("cpu", (node.status.allocatable or {}).get("cpu", "0"))
        for pod in pods:
            if pod.spec.node_name != node.metadata.name or pod.status.phase in ("Succeeded", "Failed"):
                continue
            for container in pod.spec.containers:
                value = ((container.resources and container.resources.requests) or {}).get("cpu")
                total -= parse("cpu", value) if value else 0
        free[node.metadata.name] = max(0, total)
    return free


def batch_deployment(name: str, replicas: int, cpu: str, labels: dict):
    """Return a V1Deployment of ``replicas`` batch pods, each requesting ``cpu``."""
    from kubernetes import client

    selector = {"app": name}
    resources = client.V1ResourceRequirements(requests={"cpu": cpu, "memory": "64Mi"},
                                              limits={"cpu": cpu, "memory": "64Mi"})
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels={**selector, **labels}),
        spec=client.V1DeploymentSpec(
            replicas=replicas, selector=client.V1LabelSelector(match_labels=selector),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={**selector, **labels}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="batch", image="busybox:1.36",
                                                                     resources=resources)]))))

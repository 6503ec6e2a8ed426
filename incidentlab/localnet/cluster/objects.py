"""Objects of the cluster: the API server's defaults and validation, and the scheduler's node fit."""

from __future__ import annotations

import hashlib

from .admission import pod_usage
from .quantity import parse

__all__ = ["Invalid", "fit", "container_id", "default_deployment", "qos_class", "validate"]


class Invalid(Exception):
    """An object fails validation (HTTP 422, reason Invalid)."""


def fit(pod: dict, nodes: list[dict], pods: list[dict]) -> tuple[dict | None, str]:
    """Return (a node with room for ``pod``, "") or (None, the scheduler's FailedScheduling message)."""
    requested = pod_usage(pod)
    reasons: dict[str, int] = {}
    fitting: list[tuple[int, str, dict]] = []
    for node in nodes:
        if node.get("spec", {}).get("unschedulable"):
            reasons["node(s) were unschedulable"] = reasons.get("node(s) were unschedulable", 0) + 1
            continue
        allocatable = node.get("status", {}).get("allocatable", {})
        on_node = [p for p in pods if p["spec"].get("nodeName") == node["metadata"]["name"]
                   and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
        failed = []
        if len(on_node) + 1 > parse("pods", allocatable.get("pods", "110")):
            failed.append("Too many pods")
        free_cpu = 0
        for resource in ("cpu", "memory"):
            used = sum(pod_usage(p).get(resource, 0) for p in on_node)
            free = parse(resource, allocatable.get(resource, "0")) - used - requested.get(resource, 0)
            if free < 0:
                failed.append(f"Insufficient {resource}")
            free_cpu = free if resource == "cpu" else free_cpu
        if not failed:
            fitting.append((-free_cpu, node["metadata"]["name"], node))
        for reason in failed:
            reasons[reason] = reasons.get(reason, 0) + 1
    if fitting:
        # Like the default scheduler's LeastAllocated score: the node with the most cpu left wins.
        return min(fitting, key=lambda item: item[:2])[2], ""
    listed = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    return None, f"0/{len(nodes)} nodes are available: {listed}."


def container_id(pod: dict, container: dict) -> str:
    """Return a stable containerd-style container id for ``container`` of ``pod``."""
    digest = hashlib.sha256((pod["metadata"]["uid"] + container["name"]).encode()).hexdigest()
    return f"containerd://{digest}"


def default_deployment(deployment: dict) -> None:
    """Fill the defaults the API server gives a Deployment: one replica, a 25% rolling update."""
    spec = deployment["spec"]
    spec.setdefault("replicas", 1)
    rolling = {"maxSurge": "25%", "maxUnavailable": "25%"}
    spec.setdefault("strategy", {"type": "RollingUpdate", "rollingUpdate": rolling})
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)


def qos_class(pod: dict) -> str:
    resources = [c.get("resources") or {} for c in pod["spec"].get("containers", [])]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all((r.get("limits") or {}).get(k)
                     and (r.get("limits") or {}).get(k) == (r.get("requests") or {}).get(k)
                     for r in resources for k in ("cpu", "memory"))
    return "Guaranteed" if guaranteed else "Burstable"


def validate(resource: str, obj: dict) -> None:
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    if not name:
        raise Invalid(f"{_kind_text(resource)} is invalid: metadata.name: Required value: "
                      "name or generateName is required")
    if resource == "deployments":
        spec = obj.get("spec") or {}
        replicas = spec.get("replicas", 1)
        if not isinstance(replicas, int) or replicas < 0:
            raise Invalid(f'{_kind_text(resource)} "{name}" is invalid: spec.replicas: Invalid value: {replicas}: '
                          "must be greater than or equal to 0")
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            raise Invalid(f'{_kind_text(resource)} "{name}" is invalid: spec.template.metadata.labels: Invalid value: '
                          f"{labels}: `selector` does not match template `labels`")
    if resource == "resourcequotas":
        for key, value in ((obj.get("spec") or {}).get("hard") or {}).items():
            try:
                parse(key, value)
            except ValueError as exc:
                raise Invalid(f'ResourceQuota "{name}" is invalid: spec.hard[{key}]: '
                              f'Invalid value: "{value}": {exc}') from exc


def _kind_text(resource: str) -> str:
    return {"deployments": "Deployment.apps", "replicasets": "ReplicaSet.apps", "pods": "Pod",
            "resourcequotas": "ResourceQuota", "namespaces": "Namespace", "nodes": "Node", "events": "Event"}[resource]

"""Pod defaulting and ResourceQuota admission, with the API server's exact rejection messages.

Quota is checked only when a pod is created, so a running pod keeps running under a new, smaller
quota. The quota bites on the next rollout, scale-up or replacement of a pod.
"""

from __future__ import annotations

from .quantity import format_quantity, parse

__all__ = ["Forbidden", "default_pod", "pod_usage", "quota_used", "admit_pod", "COMPUTE_RESOURCES"]

#: Resources whose quota obliges every container to set a request or limit for them.
COMPUTE_RESOURCES = ("cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory")
#: Pod phases that no longer count against a quota.
TERMINAL_PHASES = ("Succeeded", "Failed")


class Forbidden(Exception):
    """Admission rejected the object: HTTP 403 with ``message`` in a Status of reason Forbidden."""

    def __init__(self, message: str, resource: str):
        super().__init__(message)
        self.message = message
        self.resource = resource


def default_pod(pod: dict) -> dict:
    """Apply the API server's defaults that matter for quota: a missing request takes its limit."""
    for container in _containers(pod):
        resources = container.setdefault("resources", {})
        limits = resources.get("limits") or {}
        requests = resources.setdefault("requests", {})
        for name, value in limits.items():
            requests.setdefault(name, value)
        if not requests:
            resources.pop("requests")
    pod.setdefault("status", {"phase": "Pending"})
    return pod


def pod_usage(pod: dict) -> dict[str, int]:
    """Return what ``pod`` counts against a quota: pods, cpu, memory, requests.* and limits.*."""
    usage = {"pods": 1}
    for container in _containers(pod):
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            for name, value in (resources.get(kind) or {}).items():
                if name not in ("cpu", "memory"):
                    continue
                key = f"{kind}.{name}"
                usage[key] = usage.get(key, 0) + parse(key, value)
                if kind == "requests":
                    usage[name] = usage.get(name, 0) + parse(name, value)
    return usage


def quota_used(quota: dict, pods: list[dict]) -> dict[str, int]:
    """Return the quota's used amounts: each resource of its spec.hard summed over the live pods."""
    hard = quota.get("spec", {}).get("hard", {})
    used = {name: 0 for name in hard}
    for pod in pods:
        if pod.get("status", {}).get("phase") in TERMINAL_PHASES or pod["metadata"].get("deletionTimestamp"):
            continue
        for name, amount in pod_usage(pod).items():
            if name in used:
                used[name] += amount
    return used


def admit_pod(pod: dict, quotas: list[dict], pods: list[dict]) -> None:
    """Check a new pod against every quota of its namespace, like the ResourceQuota admission plugin.

    Raises Forbidden with ``failed quota: Q: must specify ...`` when a quota covers cpu or memory
    and a container sets no request or limit for it, and with ``exceeded quota: Q, requested: ...,
    used: ..., limited: ...`` when the pod would take a quota past its hard limit.
    """
    name = pod["metadata"]["name"]
    for quota in sorted(quotas, key=lambda q: q["metadata"]["name"]):
        missing = _missing_constraints(pod, quota.get("spec", {}).get("hard", {}))
        if missing:
            raise Forbidden(f'pods "{name}" is forbidden: failed quota: {quota["metadata"]["name"]}: '
                            f"must specify {missing}", "pods")
    requested = pod_usage(pod)
    for quota in sorted(quotas, key=lambda q: q["metadata"]["name"]):
        hard = {key: parse(key, value) for key, value in quota.get("spec", {}).get("hard", {}).items()}
        used = quota_used(quota, pods)
        exceeded = sorted(key for key in hard if used.get(key, 0) + requested.get(key, 0) > hard[key])
        if not exceeded:
            continue
        raise Forbidden(
            f'pods "{name}" is forbidden: exceeded quota: {quota["metadata"]["name"]}, '
            f"requested: {_pretty(exceeded, requested)}, used: {_pretty(exceeded, used)}, "
            f"limited: {_pretty(exceeded, hard)}", "pods")


def _missing_constraints(pod: dict, hard: dict) -> str:
    """Return "requests.cpu for: app; requests.memory for: app" for what the containers lack, or ""."""
    required = sorted(set(hard) & set(COMPUTE_RESOURCES))
    missing: dict[str, set[str]] = {}
    for container in pod["spec"].get("containers", []):
        resources = container.get("resources") or {}
        have = set()
        for kind in ("requests", "limits"):
            for resource in resources.get(kind) or {}:
                have.add(f"{kind}.{resource}")
                if kind == "requests":
                    have.add(resource)
        for resource in required:
            if resource not in have:
                missing.setdefault(resource, set()).add(container["name"])
    return "; ".join(f"{resource} for: {','.join(sorted(names))}" for resource, names in sorted(missing.items()))


def _pretty(names: list[str], amounts: dict[str, int]) -> str:
    return ",".join(f"{name}={format_quantity(name, amounts.get(name, 0))}" for name in names)


def _containers(pod: dict) -> list[dict]:
    spec = pod.get("spec", {})
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])

"""Server-side printing: the Table responses that ``kubectl get`` requests, with kubectl's columns."""

from __future__ import annotations

import datetime as _dt

__all__ = ["table", "human_age"]


def table(resource: str, objects: list[dict], version: str) -> dict:
    """Return a meta.k8s.io/v1 Table of ``objects`` of ``resource`` with the columns kubectl prints."""
    columns, build = _PRINTERS[resource]
    definitions = [{"name": name, "type": kind, "format": "name" if name == "Name" else "", "description": "",
                    "priority": priority} for name, kind, priority in columns]
    rows = [{"cells": build(obj), "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                            "metadata": obj["metadata"]}} for obj in objects]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": version},
            "columnDefinitions": definitions, "rows": rows}


def human_age(timestamp: str | None) -> str:
    """Return the age of an RFC 3339 ``timestamp`` as kubectl prints it: 45s, 3m2s, 15m, 5h, 2d."""
    if not timestamp:
        return "<unknown>"
    then = _dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int((_dt.datetime.now(_dt.timezone.utc) - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def _age(obj: dict) -> str:
    return human_age(obj["metadata"].get("creationTimestamp"))


def _pod(obj: dict) -> list:
    status = obj.get("status", {})
    containers = obj["spec"].get("containers", [])
    ready = sum(1 for c in status.get("containerStatuses", []) if c.get("ready"))
    restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses", []))
    phase = status.get("reason") or status.get("phase", "Pending")
    return [obj["metadata"]["name"], f"{ready}/{len(containers)}", phase, restarts, _age(obj),
            status.get("podIP", "<none>"), obj["spec"].get("nodeName", "<none>")]


def _deployment(obj: dict) -> list:
    status, spec = obj.get("status", {}), obj["spec"]
    containers = spec["template"]["spec"].get("containers", [])
    selector = ",".join(f"{k}={v}" for k, v in spec.get("selector", {}).get("matchLabels", {}).items())
    return [obj["metadata"]["name"], f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
            status.get("updatedReplicas", 0), status.get("availableReplicas", 0), _age(obj),
            ",".join(c["name"] for c in containers), ",".join(c.get("image", "") for c in containers), selector]


def _replicaset(obj: dict) -> list:
    status = obj.get("status", {})
    return [obj["metadata"]["name"], obj["spec"].get("replicas", 0), status.get("replicas", 0),
            status.get("readyReplicas", 0), _age(obj)]


def _quota(obj: dict) -> list:
    hard, used = obj.get("status", {}).get("hard", {}), obj.get("status", {}).get("used", {})
    requests = [f"{k}: {used.get(k, '0')}/{v}" for k, v in sorted(hard.items()) if not k.startswith("limits.")]
    limits = [f"{k}: {used.get(k, '0')}/{v}" for k, v in sorted(hard.items()) if k.startswith("limits.")]
    return [obj["metadata"]["name"], _age(obj), ", ".join(requests), ", ".join(limits)]


def _event(obj: dict) -> list:
    involved = obj.get("involvedObject", {})
    source = obj.get("source", {})
    count = obj.get("count", 1)
    return [human_age(obj.get("lastTimestamp")), obj.get("type", ""), obj.get("reason", ""),
            f"{involved.get('kind', '').lower()}/{involved.get('name', '')}", obj.get("message", ""),
            ", ".join(filter(None, (source.get("component"), source.get("host")))),
            human_age(obj.get("firstTimestamp")), count, obj["metadata"]["name"]]


def _node(obj: dict) -> list:
    ready = "Ready" if not obj.get("spec", {}).get("unschedulable") else "Ready,SchedulingDisabled"
    version = obj.get("status", {}).get("nodeInfo", {}).get("kubeletVersion", "")
    return [obj["metadata"]["name"], ready, "<none>", _age(obj), version]


def _namespace(obj: dict) -> list:
    return [obj["metadata"]["name"], obj.get("status", {}).get("phase", "Active"), _age(obj)]


_PRINTERS = {
    "pods": ([("Name", "string", 0), ("Ready", "string", 0), ("Status", "string", 0), ("Restarts", "string", 0),
              ("Age", "string", 0), ("IP", "string", 1), ("Node", "string", 1)], _pod),
    "deployments": ([("Name", "string", 0), ("Ready", "string", 0), ("Up-to-date", "integer", 0),
                     ("Available", "string", 0), ("Age", "string", 0), ("Containers", "string", 1),
                     ("Images", "string", 1), ("Selector", "string", 1)], _deployment),
    "replicasets": ([("Name", "string", 0), ("Desired", "integer", 0), ("Current", "integer", 0),
                     ("Ready", "integer", 0), ("Age", "string", 0)], _replicaset),
    "resourcequotas": ([("Name", "string", 0), ("Age", "string", 0), ("Request", "string", 0),
                        ("Limit", "string", 0)], _quota),
    "events": ([("Last Seen", "string", 0), ("Type", "string", 0), ("Reason", "string", 0), ("Object", "string", 0),
                ("Message", "string", 0), ("Source", "string", 1), ("First Seen", "string", 1),
                ("Count", "integer", 1), ("Name", "string", 1)], _event),
    "nodes": ([("Name", "string", 0), ("Status", "string", 0), ("Roles", "string", 0), ("Age", "string", 0),
               ("Version", "string", 0)], _node),
    "namespaces": ([("Name", "string", 0), ("Status", "string", 0), ("Age", "string", 0)], _namespace),
}

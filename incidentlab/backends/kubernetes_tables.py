"""Tables of cluster objects shaped like ``kubectl`` output, built from the official client's models."""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

from ..localnet.cluster.quantity import format_quantity, parse

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["table", "deployment_rows", "pod_rows", "event_rows", "quota_rows", "node_rows", "age"]

COLUMNS = {
    "deployments": ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONDITIONS"],
    "pods": ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "NODE", "CONDITION"],
    "events": ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE", "COUNT", "SOURCE"],
    "quotas": ["QUOTA", "RESOURCE", "USED", "HARD", "PERCENT"],
    "nodes": ["NODE", "CPU ALLOCATABLE", "CPU REQUESTS", "MEMORY ALLOCATABLE", "MEMORY REQUESTS", "PODS"],
}


def table(rows: list[dict], kind: str) -> "pd.DataFrame":
    """Return ``rows`` as a DataFrame with the columns of ``kind``, empty but with headers when there are none."""
    import pandas as pd

    return pd.DataFrame(rows, columns=COLUMNS[kind])


def age(moment: _dt.datetime | None) -> str:
    """Return the age of ``moment`` as kubectl prints it (45s, 3m2s, 15m, 5h, 2d)."""
    from ..localnet.cluster.tables import human_age

    if moment is None:
        return "<unknown>"
    return human_age(moment.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))


def deployment_rows(items) -> list[dict]:
    from kubernetes.client import V1DeploymentStatus

    rows = []
    for item in items:
        status = item.status or V1DeploymentStatus()
        conditions = ", ".join(f"{c.type}={c.status}" + (f" {c.reason}" if c.reason else "")
                               for c in status.conditions or [])
        rows.append({"NAME": item.metadata.name, "READY": f"{status.ready_replicas or 0}/{item.spec.replicas}",
                     "UP-TO-DATE": status.updated_replicas or 0, "AVAILABLE": status.available_replicas or 0,
                     "AGE": age(item.metadata.creation_timestamp), "CONDITIONS": conditions})
    return rows


def pod_rows(items) -> list[dict]:
    rows = []
    for item in items:
        statuses = item.status.container_statuses or []
        conditions = item.status.conditions or []
        unscheduled = next((c for c in conditions if c.type == "PodScheduled" and c.status == "False"), None)
        rows.append({"NAME": item.metadata.name,
                     "READY": f"{sum(1 for s in statuses if s.ready)}/{len(item.spec.containers)}",
                     "STATUS": item.status.phase, "RESTARTS": sum(s.restart_count for s in statuses),
                     "AGE": age(item.metadata.creation_timestamp), "NODE": item.spec.node_name or "<none>",
                     "CONDITION": f"PodScheduled=False {unscheduled.reason}" if unscheduled else ""})
    return rows


def event_rows(items) -> list[dict]:
    def last_seen(event):
        return event.last_timestamp or event.event_time or event.metadata.creation_timestamp

    rows = []
    earliest = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)
    # Timestamps have whole seconds, so the resource version orders events of the same second.
    for item in sorted(items, key=lambda e: (last_seen(e) or earliest, int(e.metadata.resource_version or 0))):
        involved, source = item.involved_object, item.source
        rows.append({"LAST SEEN": age(last_seen(item)), "TYPE": item.type, "REASON": item.reason,
                     "OBJECT": f"{(involved.kind or '').lower()}/{involved.name}", "MESSAGE": item.message,
                     "COUNT": item.count or 1, "SOURCE": (source.component if source else "") or ""})
    return rows


def quota_rows(items) -> list[dict]:
    rows = []
    for item in items:
        hard, used = item.status.hard or {}, item.status.used or {}
        for resource in sorted(hard):
            limit = parse(resource, hard[resource])
            taken = parse(resource, used.get(resource, "0"))
            percent = f"{100 * taken / limit:.0f}%" if limit else "-"
            rows.append({"QUOTA": item.metadata.name, "RESOURCE": resource, "USED": used.get(resource, "0"),
                         "HARD": hard[resource], "PERCENT": percent})
    return rows


def node_rows(nodes, pods) -> list[dict]:
    rows = []
    for node in nodes:
        allocatable = node.status.allocatable or {}
        on_node = [p for p in pods if p.spec.node_name == node.metadata.name
                   and p.status.phase not in ("Succeeded", "Failed")]
        requested = {"cpu": 0, "memory": 0}
        for pod in on_node:
            for container in pod.spec.containers:
                for resource in requested:
                    value = ((container.resources and container.resources.requests) or {}).get(resource)
                    requested[resource] += parse(resource, value) if value else 0
        row = {"NODE": node.metadata.name, "PODS": f"{len(on_node)}/{allocatable.get('pods', '?')}"}
        for resource in ("cpu", "memory"):
            total = parse(resource, allocatable.get(resource, "0"))
            share = f" ({100 * requested[resource] / total:.0f}%)" if total else ""
            row[f"{resource.upper()} ALLOCATABLE"] = allocatable.get(resource, "0")
            row[f"{resource.upper()} REQUESTS"] = format_quantity(resource, requested[resource]) + share
        rows.append(row)
    return rows

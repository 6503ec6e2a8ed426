"""Discovery documents of the cluster's API: groups, versions and resources, shaped like the API server's."""

from __future__ import annotations

__all__ = ["RESOURCES", "Resource", "api_versions", "api_group_list", "resource_list", "find", "SERVER_VERSION"]

from typing import NamedTuple


class Resource(NamedTuple):
    """One served resource: plural name, group ("" for core), kind, namespaced, short names."""

    name: str
    group: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...]
    singular: str


VERBS = ["create", "delete", "get", "list", "patch", "update"]
RESOURCES = (
    Resource("namespaces", "", "Namespace", False, ("ns",), "namespace"),
    Resource("nodes", "", "Node", False, ("no",), "node"),
    Resource("pods", "", "Pod", True, ("po",), "pod"),
    Resource("events", "", "Event", True, ("ev",), "event"),
    Resource("resourcequotas", "", "ResourceQuota", True, ("quota",), "resourcequota"),
    Resource("deployments", "apps", "Deployment", True, ("deploy",), "deployment"),
    Resource("replicasets", "apps", "ReplicaSet", True, ("rs",), "replicaset"),
)
#: Version reported by GET /version, a Kubernetes release whose API the cluster follows.
SERVER_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-incidentlab", "gitCommit": "",
                  "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.4",
                  "compiler": "gc", "platform": "linux/amd64"}


def find(group: str, name: str) -> Resource | None:
    """Return the resource ``name`` of API group ``group`` ("" for core v1), or None."""
    return next((r for r in RESOURCES if r.group == group and r.name == name), None)


def api_versions(address: str) -> dict:
    """Return GET /api: the core group's versions."""
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]}


def api_group_list() -> dict:
    """Return GET /apis: the named groups (apps only)."""
    version = {"groupVersion": "apps/v1", "version": "v1"}
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [{"name": "apps", "versions": [version], "preferredVersion": version}]}


def resource_list(group: str) -> dict:
    """Return GET /api/v1 or /apis/apps/v1: the resources of that group version."""
    entries = []
    for resource in RESOURCES:
        if resource.group != group:
            continue
        entries.append({"name": resource.name, "singularName": resource.singular, "namespaced": resource.namespaced,
                        "kind": resource.kind, "verbs": VERBS, "shortNames": list(resource.short_names)})
        for sub in ("status", "scale") if resource.name == "deployments" else ("status",):
            if resource.name == "events":
                break
            entries.append({"name": f"{resource.name}/{sub}", "singularName": "", "namespaced": resource.namespaced,
                            "kind": "Scale" if sub == "scale" else resource.kind, "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/v1" if group else "v1",
            "resources": entries}

"""The cluster's object store: namespaced and cluster-wide objects with uids and resource versions.

Objects live in memory and are written to ``state.json`` under the cluster's home after each
change, so a restarted cluster keeps its namespaces, quotas and workloads, as etcd would.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import os
import threading
import uuid
from pathlib import Path

__all__ = ["Store", "CLUSTER_SCOPED", "now_text", "Conflict"]

logger = logging.getLogger("incidentlab.localnet.cluster.store")

#: Resources without a namespace.
CLUSTER_SCOPED = frozenset({"namespaces", "nodes"})
STATE_FILE = "state.json"
#: Similar events of one object (same type, reason and source) after which they are combined,
#: as client-go's event aggregator does.
AGGREGATE_AFTER = 10
AGGREGATE_PREFIX = "(combined from similar events): "


class Conflict(Exception):
    """A create found the name taken (HTTP 409 AlreadyExists) or an update an old resourceVersion."""


def now_text() -> str:
    """Return the current UTC time as Kubernetes writes it: RFC 3339 in seconds with ``Z``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Store:
    """Every object of the cluster by (resource, namespace, name), guarded by one lock.

    Takes the folder of ``state.json`` (None keeps everything in memory only).
    """

    def __init__(self, home: str | os.PathLike | None = None):
        self.lock = threading.RLock()
        self.path = Path(home) / STATE_FILE if home else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._objects: dict[tuple[str, str, str], dict] = {}
        self._version = 0
        self._dirty = False
        self._load()

    # -- reads --------------------------------------------------------------------------

    def get(self, resource: str, namespace: str, name: str) -> dict | None:
        with self.lock:
            found = self._objects.get((resource, _ns(resource, namespace), name))
            return copy.deepcopy(found) if found is not None else None

    def list(self, resource: str, namespace: str | None = None) -> list[dict]:
        """Return copies of the objects of ``resource``, in ``namespace`` or in all, sorted by namespace and name."""
        with self.lock:
            found = [obj for (kind, ns, _), obj in self._objects.items()
                     if kind == resource and (namespace is None or ns == namespace)]
            found.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
            return copy.deepcopy(found)

    @property
    def version(self) -> str:
        with self.lock:
            return str(self._version)

    # -- writes -------------------------------------------------------------------------

    def create(self, resource: str, obj: dict) -> dict:
        """Store a new object, filling uid, resourceVersion, creationTimestamp and generation; return a copy.

        Raises Conflict when the name is taken.
        """
        with self.lock:
            meta = obj.setdefault("metadata", {})
            key = (resource, _ns(resource, meta.get("namespace", "")), meta["name"])
            if key in self._objects:
                raise Conflict(f'{resource} "{meta["name"]}" already exists')
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_text(), resourceVersion=self._bump())
            if resource not in CLUSTER_SCOPED:
                meta["namespace"] = key[1]
            meta.setdefault("generation", 1)
            self._objects[key] = copy.deepcopy(obj)
            return copy.deepcopy(obj)

    def update(self, resource: str, obj: dict, *, check_version: bool = False) -> dict:
        """Replace a stored object, keeping uid and creationTimestamp; bump generation when spec changed.

        Raises KeyError when there is none, and Conflict when ``check_version`` is set and the
        object's resourceVersion is not the stored one.
        """
        with self.lock:
            meta = obj["metadata"]
            key = (resource, _ns(resource, meta.get("namespace", "")), meta["name"])
            old = self._objects[key]
            expected = meta.get("resourceVersion")
            if check_version and expected and expected != old["metadata"]["resourceVersion"]:
                raise Conflict(f'Operation cannot be fulfilled on {resource} "{meta["name"]}": the object has been '
                               "modified; please apply your changes to the latest version and try again")
            for field in ("uid", "creationTimestamp", "namespace"):
                if field in old["metadata"]:
                    meta[field] = old["metadata"][field]
            generation = old["metadata"].get("generation", 1)
            meta["generation"] = generation + 1 if obj.get("spec") != old.get("spec") else generation
            meta["resourceVersion"] = self._bump()
            self._objects[key] = copy.deepcopy(obj)
            return copy.deepcopy(obj)

    def delete(self, resource: str, namespace: str, name: str) -> dict | None:
        """Remove an object and return it, or None when there was none."""
        with self.lock:
            removed = self._objects.pop((resource, _ns(resource, namespace), name), None)
            if removed is not None:
                self._bump()
            return removed

    def record_event(self, involved: dict, type_: str, reason: str, message: str, component: str,
                     host: str = "") -> dict:
        """Record an event about ``involved`` (an object) like client-go's event recorder.

        An event equal to an earlier one gets its count raised and lastTimestamp moved. After
        AGGREGATE_AFTER similar events with different messages, one combined event carries the
        count, with the latest message prefixed by "(combined from similar events): ".
        """
        meta = involved["metadata"]
        namespace = meta.get("namespace") or "default"
        with self.lock:
            similar = [e for e in self.list("events", namespace)
                       if e["involvedObject"].get("uid") == meta.get("uid") and e["type"] == type_
                       and e["reason"] == reason and e["source"].get("component") == component]
            same = next((e for e in similar if e["message"] == message), None)
            if same is None and len(similar) >= AGGREGATE_AFTER:
                same = next((e for e in similar if e["message"].startswith(AGGREGATE_PREFIX)), None)
                message = AGGREGATE_PREFIX + message
                if same is not None:
                    same["message"] = message
            if same is not None:
                same["count"] += 1
                same["lastTimestamp"] = now_text()
                return self.update("events", same)
            stamp = now_text()
            event = {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
                "involvedObject": {"kind": involved.get("kind"), "namespace": meta.get("namespace"),
                                   "name": meta["name"], "uid": meta.get("uid"),
                                   "apiVersion": involved.get("apiVersion"),
                                   "resourceVersion": meta.get("resourceVersion")},
                "reason": reason, "message": message, "type": type_,
                "source": {"component": component, **({"host": host} if host else {})},
                "count": 1, "firstTimestamp": stamp, "lastTimestamp": stamp,
                "reportingComponent": component, "reportingInstance": host,
            }
            return self.create("events", event)

    # -- persistence ----------------------------------------------------------------------

    def save_if_changed(self) -> None:
        """Write state.json atomically when something changed since the last save."""
        with self.lock:
            if self.path is None or not self._dirty:
                return
            payload = {"resourceVersion": self._version, "objects": list(self._objects.values())}
            self._dirty = False
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload), encoding="utf-8")
        tmp.replace(self.path)

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
        except ValueError as exc:
            logger.error("cluster state %s is not valid JSON (%s); starting empty", self.path, exc)
            return
        self._version = int(payload.get("resourceVersion", 0))
        for obj in payload.get("objects", []):
            resource = _RESOURCE_OF_KIND.get(obj.get("kind"))
            if resource:
                meta = obj["metadata"]
                self._objects[(resource, _ns(resource, meta.get("namespace", "")), meta["name"])] = obj
        logger.info("loaded %d objects from %s", len(self._objects), self.path)

    def _bump(self) -> str:
        self._version += 1
        self._dirty = True
        return str(self._version)


_RESOURCE_OF_KIND = {"Namespace": "namespaces", "Node": "nodes", "Pod": "pods", "Deployment": "deployments",
                     "ReplicaSet": "replicasets", "ResourceQuota": "resourcequotas", "Event": "events"}


def _ns(resource: str, namespace: str) -> str:
    return "" if resource in CLUSTER_SCOPED else (namespace or "default")

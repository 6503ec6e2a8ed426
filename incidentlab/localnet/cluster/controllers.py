"""The cluster's control loop: deployment and replicaset controllers, scheduler, kubelet and quota status.

One thread runs every controller in turn. Each step only reads and writes the object store, so
the objects, conditions and events are what ``kubectl`` or the Python client read back.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import random
import time

from .admission import Forbidden, admit_pod, default_pod, quota_used
from .objects import container_id, default_deployment, fit, qos_class, validate
from .quantity import format_quantity, parse
from .store import Store, now_text

__all__ = ["Cluster", "NotFound"]

logger = logging.getLogger("incidentlab.localnet.cluster.controllers")

#: Characters of generated names and the pod-template-hash, as in Kubernetes (no vowels).
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
HASH_LABEL = "pod-template-hash"
#: Seconds an event is kept after its last occurrence, the API server's default --event-ttl of 1h.
EVENT_TTL = 3600


class NotFound(Exception):
    """An object or its namespace does not exist (HTTP 404)."""

    def __init__(self, resource: str, name: str):
        super().__init__(f'{resource} "{name}" not found')
        self.resource = resource
        self.name = name


class Cluster:
    """The cluster's state and controllers over one store; the API server calls create/replace/delete.

    Takes the store, the seconds between controller passes (already time-scaled) and a seed for
    generated names.
    """

    def __init__(self, store: Store, *, interval: float, seed: int = 0):
        self.store = store
        self.interval = interval
        # The store's version joins the seed so that a restarted cluster does not repeat pod names.
        self.rng = random.Random(f"{seed}:{store.version}")
        # Object uid -> (monotonic time of the next retry, delay after it).
        self._next_try: dict[str, tuple[float, float]] = {}
        self._synced_version = ""

    # -- writes through the API ----------------------------------------------------------

    def create(self, resource: str, obj: dict) -> dict:
        """Validate, default and admit a new object, then store it; return it as stored.

        Raises NotFound for a missing namespace, Invalid for a bad object and Forbidden from quota.
        """
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + self._suffix(5)
        validate(resource, obj)
        with self.store.lock:
            namespace = meta.get("namespace") or "default"
            if resource not in ("namespaces", "nodes") and self.store.get("namespaces", "", namespace) is None:
                raise NotFound("namespaces", namespace)
            if resource == "pods":
                default_pod(obj)
                admit_pod(obj, self.store.list("resourcequotas", namespace), self.store.list("pods", namespace))
            if resource == "namespaces":
                obj.setdefault("status", {"phase": "Active"})
            if resource == "deployments":
                default_deployment(obj)
                obj["status"] = {}
            if resource == "resourcequotas":
                obj["status"] = self._quota_status(obj, self.store.list("pods", namespace))
            return self.store.create(resource, obj)

    def replace(self, resource: str, obj: dict) -> dict:
        """Replace an object (PUT), keeping status the controllers own; raises NotFound or Invalid."""
        validate(resource, obj)
        meta = obj["metadata"]
        with self.store.lock:
            old = self.store.get(resource, meta.get("namespace", ""), meta["name"])
            if old is None:
                raise NotFound(resource, meta["name"])
            if resource in ("deployments", "replicasets", "pods") and "status" in old:
                obj["status"] = old["status"]
            if resource == "resourcequotas":
                obj["status"] = self._quota_status(obj, self.store.list("pods", meta.get("namespace")))
            return self.store.update(resource, obj, check_version=True)

    def delete(self, resource: str, namespace: str, name: str) -> dict:
        """Delete an object; its dependants (replicasets, pods, a namespace's objects) follow. Raises NotFound."""
        with self.store.lock:
            removed = self.store.delete(resource, namespace, name)
            if removed is None:
                raise NotFound(resource, name)
            if resource == "namespaces":
                for kind in ("pods", "deployments", "replicasets", "resourcequotas", "events"):
                    for obj in self.store.list(kind, name):
                        self.store.delete(kind, name, obj["metadata"]["name"])
            return removed

    # -- the control loop ------------------------------------------------------------------

    def run(self, stopped) -> None:
        """Run a controller pass every ``interval`` seconds until the event ``stopped`` is set."""
        while not stopped.wait(self.interval):
            try:
                self.sync()
            except Exception:  # a controller bug must not stop the cluster; log it and try again
                logger.exception("controller pass failed")

    def sync(self) -> None:
        """Run one pass of every controller and save the state when it changed.

        A pass is skipped while nothing changed since the last one and no retry is due, so an
        idle cluster costs almost nothing.
        """
        with self.store.lock:
            now = time.monotonic()
            if self.store.version == self._synced_version and all(due > now for due, _ in self._next_try.values()):
                return
            self._collect_garbage()
            for deployment in self.store.list("deployments"):
                self._sync_deployment(deployment)
            for replicaset in self.store.list("replicasets"):
                self._sync_replicaset(replicaset)
            self._schedule()
            self._run_kubelet()
            for deployment in self.store.list("deployments"):
                self._deployment_status(deployment)
            for quota in self.store.list("resourcequotas"):
                status = self._quota_status(quota, self.store.list("pods", quota["metadata"]["namespace"]))
                if status != quota.get("status"):
                    quota["status"] = status
                    self.store.update("resourcequotas", quota)
            self._forget_retries()
            self._synced_version = self.store.version
        self.store.save_if_changed()

    # -- deployment controller ---------------------------------------------------------------

    def _sync_deployment(self, deployment: dict) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        namespace, desired = meta["namespace"], spec.get("replicas", 1)
        template_hash = _template_hash(spec["template"])
        owned = self._owned("replicasets", namespace, meta["uid"])
        current = next((rs for rs in owned if rs["metadata"]["labels"].get(HASH_LABEL) == template_hash), None)
        if current is None:
            current = self._new_replicaset(deployment, template_hash)
            self.store.record_event(deployment, "Normal", "ScalingReplicaSet",
                                    f"Scaled up replica set {current['metadata']['name']} from 0 to {desired}",
                                    "deployment-controller")
        new_available = current.get("status", {}).get("availableReplicas", 0)
        # NOTE: a simplified rolling update: the new replicaset is scaled to the full count at
        # once, and old ones shrink as its pods become available (maxSurge is not enforced).
        self._scale(current, desired)
        for old in owned:
            if old["metadata"]["uid"] != current["metadata"]["uid"]:
                self._scale(old, max(0, min(old["spec"]["replicas"], desired - new_available)))

    def _new_replicaset(self, deployment: dict, template_hash: str) -> dict:
        meta, spec = deployment["metadata"], deployment["spec"]
        template = json.loads(json.dumps(spec["template"]))
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = template_hash
        selector = json.loads(json.dumps(spec["selector"]))
        selector.setdefault("matchLabels", {})[HASH_LABEL] = template_hash
        replicaset = {
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": f"{meta['name']}-{template_hash}", "namespace": meta["namespace"],
                         "labels": dict(template["metadata"]["labels"]),
                         "annotations": {"deployment.kubernetes.io/desired-replicas": str(spec.get("replicas", 1))},
                         "ownerReferences": [_owner(deployment)]},
            "spec": {"replicas": 0, "selector": selector, "template": template},
            "status": {"replicas": 0},
        }
        return self.store.create("replicasets", replicaset)

    def _scale(self, replicaset: dict, replicas: int) -> None:
        if replicaset["spec"].get("replicas") != replicas:
            replicaset["spec"]["replicas"] = replicas
            replicaset.update(self.store.update("replicasets", replicaset))

    def _deployment_status(self, deployment: dict) -> None:
        meta, spec = deployment["metadata"], deployment["spec"]
        desired = spec.get("replicas", 1)
        owned = self._owned("replicasets", meta["namespace"], meta["uid"])
        template_hash = _template_hash(spec["template"])
        pods = [p for rs in owned for p in self._owned("pods", meta["namespace"], rs["metadata"]["uid"])]
        ready = sum(1 for p in pods if _pod_ready(p))
        updated = sum(1 for p in pods if p["metadata"]["labels"].get(HASH_LABEL) == template_hash)
        previous = {c["type"]: c for c in deployment.get("status", {}).get("conditions", [])}
        conditions = []
        max_unavailable = desired * 25 // 100
        if ready >= desired - max_unavailable:
            conditions.append(_condition(previous, "Available", "True", "MinimumReplicasAvailable",
                                         "Deployment has minimum availability."))
        else:
            conditions.append(_condition(previous, "Available", "False", "MinimumReplicasUnavailable",
                                         "Deployment does not have minimum availability."))
        new_rs = f"{meta['name']}-{template_hash}"
        if updated >= desired and ready >= desired:
            conditions.append(_condition(previous, "Progressing", "True", "NewReplicaSetAvailable",
                                         f'ReplicaSet "{new_rs}" has successfully progressed.'))
        else:
            conditions.append(_condition(previous, "Progressing", "True", "ReplicaSetUpdated",
                                         f'ReplicaSet "{new_rs}" is progressing.'))
        failure = next((c for rs in owned for c in rs.get("status", {}).get("conditions", [])
                        if c["type"] == "ReplicaFailure" and c["status"] == "True"), None)
        if failure is not None:
            conditions.append(_condition(previous, "ReplicaFailure", "True", "FailedCreate", failure["message"]))
        status = {"observedGeneration": meta.get("generation", 1), "replicas": len(pods), "updatedReplicas": updated,
                  "readyReplicas": ready, "availableReplicas": ready, "conditions": conditions}
        if desired - ready > 0:
            status["unavailableReplicas"] = desired - ready
        status = {k: v for k, v in status.items() if v != 0 or k in ("observedGeneration",)}
        if status != deployment.get("status"):
            deployment["status"] = status
            self.store.update("deployments", deployment)

    # -- replicaset controller -----------------------------------------------------------------

    def _sync_replicaset(self, replicaset: dict) -> None:
        meta = replicaset["metadata"]
        pods = self._owned("pods", meta["namespace"], meta["uid"])
        desired = replicaset["spec"].get("replicas", 0)
        failure = None
        if len(pods) < desired and self._due(meta["uid"]):
            failure = self._create_pods(replicaset, desired - len(pods))
        for extra in pods[desired:]:
            self.store.delete("pods", meta["namespace"], extra["metadata"]["name"])
            self.store.record_event(replicaset, "Normal", "SuccessfulDelete",
                                    f"Deleted pod: {extra['metadata']['name']}", "replicaset-controller")
        pods = self._owned("pods", meta["namespace"], meta["uid"])
        previous = {c["type"]: c for c in replicaset.get("status", {}).get("conditions", [])}
        conditions = list(previous.values())
        if failure is not None:
            conditions = [_condition(previous, "ReplicaFailure", "True", "FailedCreate", failure)]
        elif len(pods) >= desired:
            conditions = []
        ready = sum(1 for p in pods if _pod_ready(p))
        status = {"replicas": len(pods), "fullyLabeledReplicas": len(pods), "readyReplicas": ready,
                  "availableReplicas": ready, "observedGeneration": meta.get("generation", 1)}
        status = {k: v for k, v in status.items() if v != 0 or k in ("replicas", "observedGeneration")}
        if conditions:
            status["conditions"] = conditions
        if status != replicaset.get("status"):
            replicaset["status"] = status
            self.store.update("replicasets", replicaset)

    def _create_pods(self, replicaset: dict, count: int) -> str | None:
        """Create up to ``count`` pods of ``replicaset``; return the first admission error, or None."""
        meta = replicaset["metadata"]
        for _ in range(count):
            template = json.loads(json.dumps(replicaset["spec"]["template"]))
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {**template.get("metadata", {}), "name": f"{meta['name']}-{self._suffix(5)}",
                                "generateName": f"{meta['name']}-", "namespace": meta["namespace"],
                                "ownerReferences": [_owner(replicaset)]},
                   "spec": template["spec"]}
            try:
                created = self.create("pods", pod)
            except Forbidden as exc:
                self.store.record_event(replicaset, "Warning", "FailedCreate", f"Error creating: {exc.message}",
                                        "replicaset-controller")
                logger.info("replicaset %s/%s: pod creation rejected: %s", meta["namespace"], meta["name"], exc.message)
                return exc.message
            self._next_try.pop(meta["uid"], None)
            self.store.record_event(replicaset, "Normal", "SuccessfulCreate",
                                    f"Created pod: {created['metadata']['name']}", "replicaset-controller")
        return None

    # -- scheduler and kubelet ---------------------------------------------------------------------

    def _schedule(self) -> None:
        nodes = self.store.list("nodes")
        pods = self.store.list("pods")
        for pod in pods:
            if pod["spec"].get("nodeName") or pod.get("status", {}).get("phase") != "Pending":
                continue
            if not self._due(pod["metadata"]["uid"]):
                continue
            node, message = fit(pod, nodes, pods)
            if node is None:
                self._unschedulable(pod, message)
                continue
            pod["spec"]["nodeName"] = node["metadata"]["name"]
            pod["status"]["conditions"] = [_condition({}, "PodScheduled", "True", None, None)]
            self.store.update("pods", pod)
            self._next_try.pop(pod["metadata"]["uid"], None)
            self.store.record_event(pod, "Normal", "Scheduled", f"Successfully assigned {pod['metadata']['namespace']}/"
                                    f"{pod['metadata']['name']} to {node['metadata']['name']}", "default-scheduler")

    def _unschedulable(self, pod: dict, message: str) -> None:
        conditions = [_condition({}, "PodScheduled", "False", "Unschedulable", message)]
        if pod["status"].get("conditions") != conditions:
            pod["status"]["conditions"] = conditions
            self.store.update("pods", pod)
        self.store.record_event(pod, "Warning", "FailedScheduling", message, "default-scheduler")

    def _run_kubelet(self) -> None:
        for pod in self.store.list("pods"):
            node = pod["spec"].get("nodeName")
            if not node or pod["status"].get("phase") != "Pending":
                continue
            started = now_text()
            pod_ip = f"10.244.{self.rng.randint(0, 2)}.{self.rng.randint(2, 254)}"
            pod["status"].update(
                phase="Running", hostIP="127.0.0.1", podIP=pod_ip,
                startTime=started, qosClass=qos_class(pod),
                conditions=[_condition({}, kind, "True", None, None)
                            for kind in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
                containerStatuses=[{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True,
                                    "restartCount": 0, "started": True,
                                    "containerID": container_id(pod, c),
                                    "state": {"running": {"startedAt": started}}}
                                   for c in pod["spec"].get("containers", [])])
            self.store.update("pods", pod)
            for container in pod["spec"].get("containers", []):
                self.store.record_event(pod, "Normal", "Started", f"Started container {container['name']}",
                                        "kubelet", host=node)

    # -- helpers ---------------------------------------------------------------------------------

    def _collect_garbage(self) -> None:
        """Delete replicasets and pods whose controlling owner is gone, and events past their TTL."""
        expired = (_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=EVENT_TTL)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for event in self.store.list("events"):
            # RFC 3339 times in UTC with whole seconds sort as text.
            if (event.get("lastTimestamp") or "") < expired:
                self.store.delete("events", event["metadata"]["namespace"], event["metadata"]["name"])
        for resource, owner_resource in (("replicasets", "deployments"), ("pods", "replicasets")):
            owners = {o["metadata"]["uid"] for o in self.store.list(owner_resource)}
            for obj in self.store.list(resource):
                refs = obj["metadata"].get("ownerReferences") or []
                if refs and not any(ref["uid"] in owners for ref in refs):
                    self.store.delete(resource, obj["metadata"]["namespace"], obj["metadata"]["name"])

    def _owned(self, resource: str, namespace: str, owner_uid: str) -> list[dict]:
        return [obj for obj in self.store.list(resource, namespace)
                if any(ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or [])]

    def _quota_status(self, quota: dict, pods: list[dict]) -> dict:
        hard = quota.get("spec", {}).get("hard", {})
        used = quota_used(quota, pods)
        return {"hard": {k: format_quantity(k, parse(k, v)) for k, v in hard.items()},
                "used": {k: format_quantity(k, v) for k, v in used.items()}}

    def _due(self, key: str) -> bool:
        """Return True when a retry for ``key`` is due; retries back off from one pass to 10 passes."""
        now = time.monotonic()
        due, delay = self._next_try.get(key, (0.0, self.interval))
        if now < due:
            return False
        self._next_try[key] = (now + delay, min(delay * 2, 10 * self.interval))
        return True

    def _forget_retries(self) -> None:
        """Drop the retry state of objects that no longer exist."""
        alive = {obj["metadata"]["uid"] for resource in ("pods", "replicasets") for obj in self.store.list(resource)}
        for uid in set(self._next_try) - alive:
            del self._next_try[uid]

    def _suffix(self, length: int) -> str:
        return "".join(self.rng.choice(NAME_ALPHABET) for _ in range(length))


def _pod_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def _condition(previous: dict, type_: str, status: str, reason: str | None, message: str | None) -> dict:
    old = previous.get(type_)
    stamp = now_text()
    transition = old["lastTransitionTime"] if old and old["status"] == status and "lastTransitionTime" in old else stamp
    condition = {"type": type_, "status": status, "lastTransitionTime": transition}
    if type_ in ("Available", "Progressing", "ReplicaFailure"):
        unchanged = old and old.get("reason") == reason and old.get("message") == message
        condition["lastUpdateTime"] = old.get("lastUpdateTime", stamp) if unchanged else stamp
    if type_ in ("Initialized", "Ready", "ContainersReady", "PodScheduled"):
        condition["lastProbeTime"] = None
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _owner(obj: dict) -> dict:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def _template_hash(template: dict) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(NAME_ALPHABET[b % len(NAME_ALPHABET)] for b in digest[:10])


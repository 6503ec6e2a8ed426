"""The Kubernetes backend: the provider's cluster through the official ``kubernetes`` client.

One code path serves the embedded cluster (a localnet service on 127.0.0.1) and a real one
(kind or a provider's). A real cluster is used only when its context is named in the lab
configuration, and writes go only to namespaces that the lab created or that the configuration lists.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._fileio import write_atomic
from ..errors import ConfigError, ScenarioError
from .kubernetes_tables import deployment_rows, event_rows, node_rows, pod_rows, quota_rows, table

if TYPE_CHECKING:
    import pandas as pd

    from ..lab import Lab

__all__ = ["ProviderCluster", "write_embedded_kubeconfig", "EMBEDDED_CONTEXT", "WORKLOAD_NAMESPACE",
           "MANAGED_LABEL", "LEASE_LABEL"]

logger = logging.getLogger(__name__)

EMBEDDED_CONTEXT = "incidentlab-embedded"
KUBECONFIG_FILE = "kubeconfig"
#: Namespace of the provider's lease workloads.
WORKLOAD_NAMESPACE = "virtengine-workloads"
#: Label of every namespace and object the lab creates; its value is "incidentlab".
MANAGED_LABEL = "app.kubernetes.io/managed-by"
MANAGED_VALUE = "incidentlab"
#: Label carrying the lease id on a lease's Deployment and pods.
LEASE_LABEL = "virtengine.io/lease"
DEFAULT_IMAGE = "nginx:1.25"


def write_embedded_kubeconfig(home: str | os.PathLike, api_url: str, token: str, ca_file: str | None) -> Path:
    """Write ``HOME/kubeconfig`` (mode 0600) with the context ``incidentlab-embedded``; return its path.

    Use it with ``kubectl --kubeconfig HOME/kubeconfig get pods -n virtengine-workloads``.
    """
    import yaml

    cluster: dict[str, Any] = {"server": api_url}
    if ca_file:
        cluster["certificate-authority-data"] = base64.b64encode(Path(ca_file).read_bytes()).decode()
    document = {
        "apiVersion": "v1", "kind": "Config", "preferences": {}, "current-context": EMBEDDED_CONTEXT,
        "clusters": [{"name": EMBEDDED_CONTEXT, "cluster": cluster}],
        "users": [{"name": EMBEDDED_CONTEXT, "user": {"token": token}}],
        "contexts": [{"name": EMBEDDED_CONTEXT, "context": {"cluster": EMBEDDED_CONTEXT, "user": EMBEDDED_CONTEXT,
                                                           "namespace": WORKLOAD_NAMESPACE}}],
    }
    path = Path(home) / KUBECONFIG_FILE
    write_atomic(path, yaml.safe_dump(document, sort_keys=False))
    os.chmod(path, 0o600)
    return path


class ProviderCluster:
    """The provider's cluster as a notebook uses it: leases, quotas, pods, events and node capacity.

    Build it with ``embedded_for(lab)`` or ``from_kubeconfig(config, ...)``, as ``lab.cluster`` does.
    Every table is a pandas DataFrame shaped like ``kubectl get`` output. Calls that change the
    cluster while a simulation runs are recorded in its timeline as remediation actions.
    """

    def __init__(self, api_client, *, context: str, lab: "Lab | None" = None, embedded: bool = False,
                 namespace: str = WORKLOAD_NAMESPACE, allowed_namespaces: tuple[str, ...] = ()):
        from kubernetes import client

        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.context = context
        self.lab = lab
        self.embedded = embedded
        self.namespace = namespace
        self.allowed_namespaces = tuple(allowed_namespaces)
        self.kubeconfig: Path | None = None
        self._recording = True

    # -- connecting ----------------------------------------------------------------------------

    @classmethod
    def embedded_for(cls, lab: "Lab") -> "ProviderCluster":
        """Connect to the lab's embedded cluster, writing the kubeconfig under the lab home.

        Raises ScenarioError when the localnet has no cluster service or it is not running.
        """
        from kubernetes import config as kube_config

        service = next((s for s in lab.status()["services"] if s.get("kind") == "cluster"), None)
        if service is None:
            raise ScenarioError(f"the localnet in {lab.config.home} has no cluster service; run `incidentlab lab down`, "
                                f"remove {lab.config.localnet_dir} and start the lab again to create one")
        if service["status"] != "running":
            raise ScenarioError(f"the embedded cluster {service['name']} is {service['status']}; "
                                f"start it with lab.start({service['name']!r})")
        home = Path(lab.backend.network().service(service["name"]).home)
        ca_file = home / "tls.crt"
        token = (home / "token").read_text(encoding="utf-8").strip()
        path = write_embedded_kubeconfig(lab.config.home, service["api"], token,
                                         str(ca_file) if service["api"].startswith("https") else None)
        api_client = kube_config.new_client_from_config(config_file=str(path), context=EMBEDDED_CONTEXT)
        cluster = cls(api_client, context=EMBEDDED_CONTEXT, lab=lab, embedded=True)
        cluster.kubeconfig = path
        return cluster

    @classmethod
    def from_kubeconfig(cls, config, *, context: str | None = None, kubeconfig: str | os.PathLike | None = None,
                        lab: "Lab | None" = None) -> "ProviderCluster":
        """Connect to a real cluster through ``context`` of ``kubeconfig`` (default ~/.kube/config).

        ``config`` is the LabConfig. Raises ConfigError, before any connection, when the
        context is not the one named in ``config.kube_context``.
        """
        from kubernetes import config as kube_config

        context = context or config.kube_context
        if context is None or context != config.kube_context:
            raise ConfigError(
                f"kubeconfig context {context!r} is not named in the lab configuration (kube_context="
                f"{config.kube_context!r}); the lab uses a real cluster only when you name its context, "
                "for example with INCIDENTLAB_KUBE_CONTEXT=kind-incidentlab")
        import yaml

        # The client reads KUBECONFIG once, when it is first imported, so pass the current value.
        from_env = os.environ.get("KUBECONFIG")
        config_file = str(kubeconfig) if kubeconfig else None
        if config_file is None and from_env and os.pathsep not in from_env:
            config_file = from_env  # a list of files is left to the client, which merges them
        source = config_file or from_env or "~/.kube/config"
        try:
            api_client = kube_config.new_client_from_config(config_file=config_file, context=context)
        except (kube_config.ConfigException, OSError) as exc:
            raise ConfigError(f"cannot load context {context!r} from {source}: {exc}; list its contexts with "
                              f"`kubectl --kubeconfig {source} config get-contexts`, or point KUBECONFIG at "
                              "another file") from exc
        except (yaml.YAMLError, TypeError, AttributeError, KeyError, ValueError) as exc:
            # The client reads the file with PyYAML and indexes into it, so a malformed file
            # surfaces as a parse error or a TypeError deep inside it.
            raise ConfigError(f"kubeconfig {source} is malformed ({type(exc).__name__}: {exc}); check it with "
                              f"`kubectl --kubeconfig {source} config view`, or point KUBECONFIG at a valid file") from exc
        return cls(api_client, context=context, lab=lab, allowed_namespaces=config.kube_namespaces)

    @contextlib.contextmanager
    def unrecorded(self):
        """Run the block's calls without recording them as remediation actions (a simulation's own setup)."""
        self._recording = False
        try:
            yield self
        finally:
            self._recording = True

    # -- namespaces -------------------------------------------------------------------------------

    def ensure_namespace(self, name: str | None = None) -> str:
        """Create ``name`` (default: the workload namespace) labelled as the lab's, unless the lab may already use it.

        Returns the name. Raises ConfigError for an existing namespace that the lab did not create
        and that LabConfig.kube_namespaces does not list.
        """
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        name = name or self.namespace
        if name in self.allowed_namespaces:
            return name
        try:
            found = self.core.read_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={MANAGED_LABEL: MANAGED_VALUE}))
            self.core.create_namespace(body)
            logger.info("created namespace %s context=%s", name, self.context)
            return name
        if (found.metadata.labels or {}).get(MANAGED_LABEL) != MANAGED_VALUE:
            raise ConfigError(
                f"namespace {name!r} was not created by incidentlab (no label {MANAGED_LABEL}={MANAGED_VALUE}) and is "
                f"not in the lab configuration's kube_namespaces {list(self.allowed_namespaces)}; the lab writes only "
                "to its own namespaces, so add it to INCIDENTLAB_KUBE_NAMESPACES if it is meant for the lab")
        return name

    # -- leases (Deployments) ------------------------------------------------------------------------

    def deploy_lease(self, name: str, *, replicas: int = 1, cpu: str | None = "250m", memory: str | None = "256Mi",
                     limit_cpu: str | None = None, limit_memory: str | None = None, image: str = DEFAULT_IMAGE,
                     namespace: str | None = None) -> dict:
        """Deploy a lease as a Deployment (``kubectl create deployment``); return it as a dict.

        ``cpu`` and ``memory`` are the container's requests; the limits default to twice them.
        None leaves a resource out, as a tenant's manifest without requests does.
        """
        from kubernetes import client

        namespace = self.ensure_namespace(namespace)
        labels = {"app": name, LEASE_LABEL: name, MANAGED_LABEL: MANAGED_VALUE}
        body = client.V1Deployment(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1DeploymentSpec(
                replicas=replicas, selector=client.V1LabelSelector(match_labels={"app": name}),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(containers=[client.V1Container(
                        name="app", image=image, resources=_resources(cpu, memory, limit_cpu, limit_memory))]))))
        created = self.apps.create_namespaced_deployment(namespace, body)
        logger.info("deployed lease %s replicas=%d namespace=%s context=%s", name, replicas, namespace, self.context)
        return created.to_dict()

    def deployment(self, name: str, namespace: str | None = None):
        """Return the V1Deployment ``name`` (``kubectl get deployment NAME -o yaml``)."""
        return self.apps.read_namespaced_deployment(name, namespace or self.namespace)

    def scale(self, name: str, replicas: int, *, namespace: str | None = None) -> dict:
        """Set a Deployment's replicas, like ``kubectl scale deployment NAME --replicas=N``."""
        namespace = self.ensure_namespace(namespace)
        self.apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})
        return self._record("scale", name, f"scaled to {replicas}", replicas=replicas, namespace=namespace)

    def set_resources(self, name: str, *, requests: dict | None = None, limits: dict | None = None,
                      container: str | None = None, namespace: str | None = None) -> dict:
        """Set a Deployment's container requests and limits, like ``kubectl set resources``; starts a rollout."""
        namespace = self.ensure_namespace(namespace)
        deployment = self.apps.read_namespaced_deployment(name, namespace)
        for spec in deployment.spec.template.spec.containers:
            if container is None or spec.name == container:
                spec.resources = _resources((requests or {}).get("cpu"), (requests or {}).get("memory"),
                                            (limits or {}).get("cpu"), (limits or {}).get("memory"), double=False)
        self.apps.replace_namespaced_deployment(name, namespace, deployment)
        return self._record("set_resources", name, "rollout started", requests=requests, limits=limits,
                            namespace=namespace)

    def delete_deployment(self, name: str, *, namespace: str | None = None) -> dict:
        """Delete a Deployment and, through its owner references, its replicasets and pods."""
        namespace = self.ensure_namespace(namespace)
        self.apps.delete_namespaced_deployment(name, namespace)
        return self._record("delete_deployment", name, "deleted", namespace=namespace)

    # -- quotas ------------------------------------------------------------------------------------

    def apply_quota(self, name: str, hard: dict, *, namespace: str | None = None, labels: dict | None = None) -> dict:
        """Create or replace the ResourceQuota ``name`` with ``hard`` limits (``kubectl apply``)."""
        return self._put_quota("apply_quota", name, hard, namespace, labels)

    def replace_quota(self, name: str, hard: dict, *, namespace: str | None = None) -> dict:
        """Replace the hard limits of an existing ResourceQuota, like ``kubectl replace``.

        Raises ApiException with status 404 when the quota does not exist.
        """
        from kubernetes import client

        namespace = self.ensure_namespace(namespace)
        quota = self.core.read_namespaced_resource_quota(name, namespace)
        quota.spec = client.V1ResourceQuotaSpec(hard={k: str(v) for k, v in hard.items()})
        self.core.replace_namespaced_resource_quota(name, namespace, quota)
        return self._record("replace_quota", name, _hard_text(hard), hard=hard, namespace=namespace)

    def delete_quota(self, name: str, *, namespace: str | None = None) -> dict:
        """Delete a ResourceQuota (``kubectl delete resourcequota NAME``)."""
        namespace = self.ensure_namespace(namespace)
        self.core.delete_namespaced_resource_quota(name, namespace)
        return self._record("delete_quota", name, "deleted", namespace=namespace)

    def quota(self, name: str, namespace: str | None = None) -> dict:
        """Return {"hard": {...}, "used": {...}} of a ResourceQuota, as its status reports them."""
        found = self.core.read_namespaced_resource_quota(name, namespace or self.namespace)
        return {"hard": dict(found.status.hard or {}), "used": dict(found.status.used or {})}

    # -- tables ------------------------------------------------------------------------------------

    def deployments(self, namespace: str | None = None) -> "pd.DataFrame":
        """Return the Deployments like ``kubectl get deployments``, with their conditions spelled out."""
        items = self.apps.list_namespaced_deployment(namespace or self.namespace).items
        return table(deployment_rows(items), "deployments")

    def pods(self, namespace: str | None = None, selector: str | None = None) -> "pd.DataFrame":
        """Return the pods like ``kubectl get pods -o wide``: NAME, READY, STATUS, RESTARTS, AGE, NODE, CONDITION."""
        items = self.core.list_namespaced_pod(namespace or self.namespace, label_selector=selector or "").items
        return table(pod_rows(items), "pods")

    def events(self, *, kind: str | None = None, name: str | None = None, reason: str | None = None,
               warnings_only: bool = False, namespace: str | None = None) -> "pd.DataFrame":
        """Return events like ``kubectl get events --sort-by=.lastTimestamp``, filtered by object kind, name, reason.

        The filters go to the API server as a field selector (``involvedObject.kind=ReplicaSet``),
        except ``reason``, which is filtered here.
        """
        fields = [f"involvedObject.{key}={value}" for key, value in (("kind", kind), ("name", name)) if value]
        if warnings_only:
            fields.append("type=Warning")
        items = self.core.list_namespaced_event(namespace or self.namespace, field_selector=",".join(fields)).items
        rows = [row for row in event_rows(items) if reason is None or row["REASON"] == reason]
        return table(rows, "events")

    def quota_usage(self, namespace: str | None = None) -> "pd.DataFrame":
        """Return every ResourceQuota's resources with USED and HARD, like ``kubectl describe resourcequota``."""
        items = self.core.list_namespaced_resource_quota(namespace or self.namespace).items
        return table(quota_rows(items), "quotas")

    def node_capacity(self) -> "pd.DataFrame":
        """Return each node's allocatable cpu, memory and pods against what its pods request.

        Like the "Allocated resources" part of ``kubectl describe nodes``; reads pods of every
        namespace (read only).
        """
        nodes = self.core.list_node().items
        pods = self.core.list_pod_for_all_namespaces().items
        return table(node_rows(nodes, pods), "nodes")

    # -- helpers -------------------------------------------------------------------------------------

    def _put_quota(self, action: str, name: str, hard: dict, namespace: str | None, labels: dict | None) -> dict:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        namespace = self.ensure_namespace(namespace)
        body = client.V1ResourceQuota(metadata=client.V1ObjectMeta(name=name, labels=labels),
                                      spec=client.V1ResourceQuotaSpec(hard={k: str(v) for k, v in hard.items()}))
        try:
            self.core.create_namespaced_resource_quota(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = self.core.read_namespaced_resource_quota(name, namespace)
            body.metadata.resource_version = current.metadata.resource_version
            self.core.replace_namespaced_resource_quota(name, namespace, body)
        return self._record(action, name, _hard_text(hard), hard=hard, namespace=namespace)

    def _record(self, action: str, target: str, status: str, **options: Any) -> dict:
        state = {"Status": status, "At": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        logger.info("cluster action %s %s: %s context=%s", action, target, status, self.context)
        simulation = self.lab.simulation_running if self.lab is not None and self._recording else None
        if simulation is not None and simulation.active:
            simulation.record_action(action, target, state, **options)
        return state

    def __repr__(self) -> str:
        kind = "embedded" if self.embedded else "real"
        return f"ProviderCluster(context={self.context!r}, {kind}, namespace={self.namespace!r})"


def _resources(cpu, memory, limit_cpu, limit_memory, double: bool = True):
    from kubernetes import client

    from ..localnet.cluster.quantity import format_quantity, parse

    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    limits = {k: v for k, v in (("cpu", limit_cpu), ("memory", limit_memory)) if v}
    if double:
        for key, value in requests.items():
            limits.setdefault(key, format_quantity(key, 2 * parse(key, value)))
    return client.V1ResourceRequirements(requests=requests or None, limits=limits or None)


def _hard_text(hard: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(hard.items()))

"""The embedded cluster through the official kubernetes client and kubectl: quota, scheduling, events."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
import requests
import yaml
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from incidentlab.backends.kubernetes import EMBEDDED_CONTEXT, ProviderCluster, write_embedded_kubeconfig
from incidentlab.config import LabConfig
from incidentlab.errors import ConfigError
from incidentlab.localnet.network import CLUSTER_NAME, create_network
from incidentlab.localnet.services import cluster_certificate, is_ready, service_command

NAMESPACE = "virtengine-workloads"
READY_TIMEOUT = 15.0


@pytest.fixture
def cluster(tmp_path):
    """Run only the cluster service of a new network (time_scale 0.1) and return a ProviderCluster for it."""
    network = create_network(tmp_path / "localnet", chain_id="test-1", validators=1, time_scale=0.1,
                             classic_ports=False)
    spec = network.service(CLUSTER_NAME)
    log = open(tmp_path / "cluster.log", "w")
    process = subprocess.Popen(service_command(spec, network.path), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not is_ready(spec, process.pid):
            assert process.poll() is None, (tmp_path / "cluster.log").read_text()
            assert time.monotonic() < deadline, "the cluster did not answer /readyz"
            time.sleep(0.05)
        scheme = "https" if cluster_certificate(spec) else "http"
        token = (tmp_path / "localnet" / CLUSTER_NAME / "token").read_text().strip()
        path = write_embedded_kubeconfig(tmp_path, f"{scheme}://127.0.0.1:{spec.ports['api']}", token,
                                         cluster_certificate(spec))
        api_client = kube_config.new_client_from_config(config_file=str(path), context=EMBEDDED_CONTEXT)
        provider = ProviderCluster(api_client, context=EMBEDDED_CONTEXT, embedded=True)
        provider.kubeconfig = path
        provider.ensure_namespace()
        yield provider
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def wait_for(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def pod(name: str, requests: dict | None = None, limits: dict | None = None) -> client.V1Pod:
    resources = client.V1ResourceRequirements(requests=requests, limits=limits)
    return client.V1Pod(metadata=client.V1ObjectMeta(name=name),
                        spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="nginx", resources=resources)]))


def test_quota_exceeded_is_403_with_exact_body(cluster):
    cluster.apply_quota("compute", {"limits.cpu": "6", "limits.memory": "12Gi"})
    for index in range(6):
        cluster.core.create_namespaced_pod(NAMESPACE, pod(f"web-{index}", limits={"cpu": "1", "memory": "2Gi"}))
    with pytest.raises(ApiException) as caught:
        cluster.core.create_namespaced_pod(NAMESPACE, pod("web-6597bc46dc-2wm8j", limits={"cpu": "1", "memory": "2Gi"}))
    assert caught.value.status == 403
    assert json.loads(caught.value.body) == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'pods "web-6597bc46dc-2wm8j" is forbidden: exceeded quota: compute, requested: '
                   "limits.cpu=1,limits.memory=2Gi, used: limits.cpu=6,limits.memory=12Gi, "
                   "limited: limits.cpu=6,limits.memory=12Gi",
        "reason": "Forbidden", "details": {"kind": "pods"}, "code": 403}


def test_missing_requests_message(cluster):
    cluster.apply_quota("compute", {"requests.cpu": "2", "requests.memory": "2Gi"})
    with pytest.raises(ApiException) as caught:
        cluster.core.create_namespaced_pod(NAMESPACE, pod("x"))
    assert caught.value.status == 403
    assert json.loads(caught.value.body)["message"] == (
        'pods "x" is forbidden: failed quota: compute: must specify requests.cpu for: app; requests.memory for: app')


def test_limits_default_the_requests(cluster):
    cluster.apply_quota("compute", {"requests.cpu": "2"})
    created = cluster.core.create_namespaced_pod(NAMESPACE, pod("only-limits", limits={"cpu": "500m"}))
    assert created.spec.containers[0].resources.requests == {"cpu": "500m"}
    assert wait_for(lambda: cluster.quota("compute")["used"] == {"requests.cpu": "500m"})


def test_deployment_under_full_quota(cluster):
    cluster.apply_quota("compute", {"limits.cpu": "500m", "limits.memory": "1Gi"})
    cluster.deploy_lease("web", replicas=3, cpu="500m", memory="512Mi")
    selector = "involvedObject.kind=ReplicaSet"

    def counts():
        events = cluster.core.list_namespaced_event(NAMESPACE, field_selector=selector).items
        return sum(e.count for e in events if e.reason == "FailedCreate")

    first = wait_for(counts)
    assert first >= 1
    events = [e for e in cluster.core.list_namespaced_event(NAMESPACE, field_selector=selector).items
              if e.reason == "FailedCreate"]
    assert all(e.type == "Warning" and e.source.component == "replicaset-controller" for e in events)
    assert events[0].message.startswith('Error creating: pods "web-')
    # Only the exceeded resource is listed: the pod's 1Gi memory limit still fits.
    assert events[0].message.endswith(
        " is forbidden: exceeded quota: compute, requested: limits.cpu=1, used: limits.cpu=0, limited: limits.cpu=500m")
    assert wait_for(lambda: counts() > first), "the FailedCreate count did not rise"
    deployment = cluster.apps.read_namespaced_deployment("web", NAMESPACE)
    conditions = {c.type: (c.status, c.reason) for c in deployment.status.conditions}
    assert conditions["Available"] == ("False", "MinimumReplicasUnavailable")
    assert conditions["ReplicaFailure"] == ("True", "FailedCreate")
    assert not deployment.status.ready_replicas
    assert cluster.core.list_namespaced_pod(NAMESPACE).items == []


def test_pod_without_room_is_pending(cluster):
    cluster.core.create_namespaced_pod(NAMESPACE, pod("big", requests={"cpu": "5"}))

    def failed_scheduling():
        events = cluster.core.list_namespaced_event(
            NAMESPACE, field_selector="involvedObject.kind=Pod,involvedObject.name=big").items
        return [e for e in events if e.reason == "FailedScheduling"]

    events = wait_for(failed_scheduling)
    assert events[0].message == "0/3 nodes are available: 3 Insufficient cpu."
    assert events[0].source.component == "default-scheduler"
    assert events[0].type == "Warning"
    found = cluster.core.read_namespaced_pod("big", NAMESPACE)
    assert found.status.phase == "Pending"
    scheduled = next(c for c in found.status.conditions if c.type == "PodScheduled")
    assert (scheduled.status, scheduled.reason) == ("False", "Unschedulable")


def test_scheduled_pod_runs(cluster):
    cluster.core.create_namespaced_pod(NAMESPACE, pod("small", requests={"cpu": "100m"}))
    running = wait_for(lambda: cluster.core.read_namespaced_pod("small", NAMESPACE).status.phase == "Running")
    assert running
    found = cluster.core.read_namespaced_pod("small", NAMESPACE)
    assert found.spec.node_name.startswith("virtengine-worker-")


def test_running_pods_survive_smaller_quota(cluster):
    cluster.deploy_lease("web", replicas=2, cpu="250m", memory="256Mi")
    assert wait_for(lambda: (cluster.deployment("web").status.ready_replicas or 0) == 2)
    cluster.apply_quota("compute", {"limits.cpu": "100m"})
    time.sleep(0.5)
    assert cluster.deployment("web").status.ready_replicas == 2
    # The quota bites only when the deleted pod's replacement is created.
    cluster.core.delete_namespaced_pod(cluster.core.list_namespaced_pod(NAMESPACE).items[0].metadata.name, NAMESPACE)
    assert wait_for(lambda: (cluster.deployment("web").status.ready_replicas or 0) == 1)
    assert wait_for(lambda: not cluster.events(reason="FailedCreate").empty)


def test_quota_status_used_and_hard(cluster):
    cluster.apply_quota("compute", {"pods": "10", "requests.memory": "1Gi"})
    cluster.core.create_namespaced_pod(NAMESPACE, pod("a", requests={"cpu": "100m", "memory": "256Mi"}))
    quota = wait_for(lambda: cluster.core.read_namespaced_resource_quota("compute", NAMESPACE).status.used.get("pods") == "1"
                     and cluster.core.read_namespaced_resource_quota("compute", NAMESPACE))
    assert quota.status.hard == {"pods": "10", "requests.memory": "1Gi"}
    assert quota.status.used == {"pods": "1", "requests.memory": "256Mi"}


def test_errors_are_kubernetes_status(cluster):
    with pytest.raises(ApiException) as caught:
        cluster.apps.read_namespaced_deployment("nope", NAMESPACE)
    assert caught.value.status == 404
    assert json.loads(caught.value.body)["message"] == 'deployments.apps "nope" not found'
    assert json.loads(caught.value.body)["reason"] == "NotFound"
    cluster.api_client.configuration.api_key = {"BearerToken": "Bearer wrong"}
    cluster.api_client.default_headers["Authorization"] = "Bearer wrong"
    with pytest.raises(ApiException) as caught:
        cluster.core.list_node()
    assert caught.value.status == 401


def test_unlisted_context_is_rejected(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    # Never contacted: the refusal must come before any connection.
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "prod-cluster",
        "clusters": [{"name": "prod", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "admin", "user": {"token": "not-used"}}],
        "contexts": [{"name": "prod-cluster", "context": {"cluster": "prod", "user": "admin"}}]}))
    with pytest.raises(ConfigError, match="'prod-cluster' is not named in the lab configuration"):
        ProviderCluster.from_kubeconfig(LabConfig(home=tmp_path, kube_context=None), context="prod-cluster",
                                        kubeconfig=kubeconfig)
    with pytest.raises(ConfigError, match="INCIDENTLAB_KUBE_CONTEXT"):
        ProviderCluster.from_kubeconfig(LabConfig(home=tmp_path, kube_context="kind-lab"), context="prod-cluster",
                                        kubeconfig=kubeconfig)


def test_foreign_namespace_is_rejected(cluster):
    with pytest.raises(ConfigError, match="'kube-system' was not created by incidentlab"):
        cluster.apply_quota("compute", {"pods": "1"}, namespace="kube-system")
    cluster.allowed_namespaces = ("kube-system",)
    cluster.apply_quota("compute", {"pods": "1"}, namespace="kube-system")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_get_and_describe(cluster, tmp_path):
    cluster.apply_quota("compute", {"limits.cpu": "1", "limits.memory": "1Gi"})
    cluster.deploy_lease("web", replicas=3, cpu="250m", memory="256Mi")
    wait_for(lambda: not cluster.events(reason="FailedCreate").empty)

    def kubectl(*args: str) -> str:
        env = {**os.environ, "HOME": str(tmp_path)}  # kubectl's discovery cache goes under HOME
        result = subprocess.run(["kubectl", "--kubeconfig", str(cluster.kubeconfig), *args], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert kubectl("get", "pods").split("\n")[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert kubectl("get", "deployments").split("\n")[1].split()[:2] == ["web", "2/3"]
    assert "limits.cpu: 1/1" in kubectl("get", "resourcequotas")
    assert "FailedCreate" in kubectl("get", "events")
    described = kubectl("describe", "deployment", "web")
    assert any(line.split() == ["ReplicaFailure", "True", "FailedCreate"] for line in described.splitlines())
    assert "exceeded quota: compute" in kubectl("describe", "replicaset")
    assert "limits.cpu" in kubectl("describe", "resourcequota", "compute")
    assert kubectl("get", "nodes").count("virtengine-worker-") == 3


def test_state_survives_restart(tmp_path):
    network = create_network(tmp_path / "localnet", chain_id="test-1", validators=1, time_scale=0.1,
                             classic_ports=False)
    spec = network.service(CLUSTER_NAME)
    token_path = tmp_path / "localnet" / CLUSTER_NAME / "token"
    uids = []
    for _ in range(2):
        process = subprocess.Popen(service_command(spec, network.path), stderr=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: is_ready(spec, process.pid), READY_TIMEOUT)
            scheme = "https" if cluster_certificate(spec) else "http"
            path = write_embedded_kubeconfig(tmp_path, f"{scheme}://127.0.0.1:{spec.ports['api']}",
                                             token_path.read_text().strip(), cluster_certificate(spec))
            provider = ProviderCluster(kube_config.new_client_from_config(config_file=str(path)),
                                       context=EMBEDDED_CONTEXT)
            if not uids:
                provider.apply_quota("compute", {"pods": "3"})
            uids.append(provider.core.read_namespaced_resource_quota("compute", NAMESPACE).metadata.uid)
        finally:
            process.terminate()
            process.wait(timeout=10)
    assert uids[0] == uids[1]


def test_protobuf_body_is_415(cluster):
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    server = kubeconfig["clusters"][0]["cluster"]["server"]
    token = kubeconfig["users"][0]["user"]["token"]
    session = requests.Session()
    session.trust_env = False  # loopback only, whatever proxy the environment names
    response = session.post(f"{server}/api/v1/namespaces/{NAMESPACE}/pods", data=b"k8s\x00\x0a", timeout=5,
                            headers={"Content-Type": "application/vnd.kubernetes.protobuf",
                                     "Authorization": f"Bearer {token}"},
                            verify=cluster.api_client.configuration.ssl_ca_cert or True)
    assert response.status_code == 415
    assert response.json()["reason"] == "UnsupportedMediaType"

"""The cluster faults and the provider-deployment-failure simulation on a real localnet with its cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from incidentlab import Lab
from incidentlab.chaos.journal import Journal
from incidentlab.errors import ConfigError
from incidentlab.scenarios.provider_deployment_failure import BASELINE_HARD, TENANT_QUOTA

ANSWERS = Path(__file__).resolve().parent.parent / "data" / "answers"
TIME_SCALE = 0.1
NAMESPACE = "virtengine-workloads"


@pytest.fixture
def lab(tmp_path):
    lab = Lab.connect("local", home=tmp_path / "lab", validators=1, time_scale=TIME_SCALE)
    try:
        yield lab
    finally:
        lab.down()


def wait_for(condition, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_quota_fault_restores_snapshot(lab):
    cluster = lab.cluster
    cluster.apply_quota(TENANT_QUOTA, BASELINE_HARD)
    fault = lab.fault("quota-restrict", NAMESPACE, quota=TENANT_QUOTA, hard={"pods": "0"})
    with fault:
        assert cluster.quota(TENANT_QUOTA)["hard"] == {"pods": "0"}
    assert cluster.quota(TENANT_QUOTA)["hard"] == BASELINE_HARD
    assert Journal(lab.config.home).read(fault.id)["state"] == "reverted"


def test_quota_fault_deletes_quota_it_created(lab):
    cluster = lab.cluster
    cluster.ensure_namespace()
    with lab.fault("quota-restrict", NAMESPACE, quota="fault-quota", hard={"pods": "1"}) as fault:
        created = cluster.core.read_namespaced_resource_quota("fault-quota", NAMESPACE)
        assert created.metadata.labels == {"incidentlab.io/fault": fault.id}
    assert cluster.quota_usage().empty


CHILD = textwrap.dedent("""
    import sys, time
    from incidentlab import Lab
    lab = Lab.connect("local", home=sys.argv[1])
    fault = lab.fault("quota-restrict", "virtengine-workloads", quota="tenant-quota", hard={"pods": "0"}).inject()
    print(fault.id, flush=True)
    time.sleep(60)
""")


def test_sigkilled_quota_fault_cleaned_up(lab):
    lab.cluster.apply_quota(TENANT_QUOTA, BASELINE_HARD)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(lab.config.home)], stdout=subprocess.PIPE, text=True)
    fault_id = child.stdout.readline().strip()
    assert fault_id.startswith("quota-restrict"), fault_id
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert lab.cluster.quota(TENANT_QUOTA)["hard"] == {"pods": "0"}  # the fault outlived its process

    env = {**os.environ, "INCIDENTLAB_HOME": str(lab.config.home)}
    result = subprocess.run([sys.executable, "-m", "incidentlab", "cleanup"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert fault_id in result.stdout
    assert lab.cluster.quota(TENANT_QUOTA)["hard"] == BASELINE_HARD
    assert Journal(lab.config.home).read(fault_id)["state"] == "reverted"


def test_capacity_fault_makes_pods_pending(lab):
    cluster = lab.cluster
    with lab.fault("capacity-short", "virtengine-batch"):
        cluster.deploy_lease("late", replicas=1, cpu="500m", memory="256Mi")
        assert wait_for(lambda: not cluster.events(reason="FailedScheduling").empty)
        assert cluster.pods()["STATUS"].tolist() == ["Pending"]
    assert wait_for(lambda: cluster.pods()["STATUS"].tolist() == ["Running"])
    assert cluster.deployments(namespace="virtengine-batch").empty


def test_quota_variant_recovers_in_batch(lab):
    sim = lab.simulation("provider-deployment-failure", learner="tester", seed=3, mode="batch",
                         answers_path=ANSWERS / "provider-deployment-failure-seed-3.yaml")
    assert sim.variant["name"] == "quota-exceeded"
    sim.inject()
    assert wait_for(lambda: not lab.cluster.events(reason="FailedCreate").empty)
    assert not sim.verify(timeout=0).ok
    sim.acknowledge()
    sim.triage()
    sim.diagnose()
    actions = sim.remediate()
    assert actions["action"].tolist() == ["replace_quota"]
    verification = sim.verify(timeout=30)
    assert verification.ok, verification
    report = sim.report()
    sim.close()
    assert report.record["impact"]["pod creations rejected at admission (FailedCreate)"] > 0
    kinds = [event.kind for event in sim.incident.timeline]
    assert kinds.index("fault_injected") < kinds.index("probe_failed") < kinds.index("recovery_verified")


def test_interactive_remedy_is_recorded(lab):
    sim = lab.simulation("provider-deployment-failure", learner="tester", seed=2, variant="requests-missing")
    sim.inject()
    target = sim.variant["targets"][0]
    assert wait_for(lambda: not lab.cluster.events(reason="FailedCreate").empty)
    message = lab.cluster.events(reason="FailedCreate")["MESSAGE"].iloc[0]
    assert message.endswith("is forbidden: failed quota: tenant-quota: must specify limits.cpu for: app; "
                            "limits.memory for: app; requests.cpu for: app; requests.memory for: app")
    lab.cluster.set_resources(target, requests={"cpu": "250m", "memory": "256Mi"},
                              limits={"cpu": "500m", "memory": "512Mi"})
    assert sim.verify(timeout=30).ok
    sim.close()
    recorded = [e.data for e in sim.incident.timeline if e.kind == "action"]
    assert [(a["action"], a["target"]) for a in recorded] == [("set_resources", target)]


def test_unknown_variant_rejected(lab):
    with pytest.raises(ConfigError, match="variant='disk-full' is unknown"):
        lab.simulation("provider-deployment-failure", variant="disk-full")

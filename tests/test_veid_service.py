"""The VEID service on a real localnet: HTTP API, metrics, revisions, the bad-revision fault and its cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from incidentlab import Lab
from incidentlab.chaos.journal import Journal
from incidentlab.errors import ConfigError, VeidError
from incidentlab.veid import SERVICE_NAME
from incidentlab.veid.revisions import DEFAULT_CONFIG

METRICS = ("virtengine_veid_scoring_score_avg", "virtengine_veid_scoring_score",
           "virtengine_veid_scoring_rejections", "virtengine_veid_scoring_errors", "virtengine_veid_model_loaded")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab.connect("local", home=tmp_path_factory.mktemp("veid") / "lab", time_scale=0.1)
    try:
        yield lab
    finally:
        try:
            lab.halt()
        finally:
            lab.down()


@pytest.fixture(autouse=True)
def good_revision(lab):
    """Put the service back on the shipped configuration after each test."""
    yield
    if lab.veid.current()["config"] != DEFAULT_CONFIG:
        lab.veid.rollback(to="rev-1", author="test teardown")


def wait_for(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def scored(lab, minimum):
    revision = lab.veid.current()["id"]
    return lambda: len(lab.veid.verifications(revision=revision)["score"].dropna()) >= minimum


def families(lab):
    text = requests.get(lab.veid.metrics_url, timeout=5).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_score_endpoint_answers(lab):
    body = lab.veid.score(kind="genuine", seed=3)
    assert set(body) >= {"score", "threshold", "status", "revision"}
    assert body["threshold"] == 0.75
    assert body["status"] == ("approved" if body["score"] >= 0.75 else "rejected")
    assert lab.veid.score(kind="dark", seed=3)["status"] == "rejected"
    with pytest.raises(VeidError, match="HTTP 400"):
        lab.veid.score(b"not an image")


def test_metrics_expose_veid_series(lab):
    assert wait_for(scored(lab, 30))
    found = families(lab)
    for name in METRICS:
        assert name in found, sorted(found)
    loaded = found["virtengine_veid_model_loaded"].samples
    assert [(s.labels, s.value) for s in loaded] == [({"version": "1.0.0"}, 1.0)]
    assert found["virtengine_veid_scoring_score"].type == "histogram"
    # About 18% of normal traffic is dark, blurred or face-less, so the average of 30 stays well above 0.5.
    assert 0.5 < found["virtengine_veid_scoring_score_avg"].samples[0].value <= 1.0


def test_deploy_rejects_unknown_setting(lab):
    with pytest.raises(ConfigError, match="'gamma' is unknown"):
        lab.veid.deploy({"gamma": 2.2})
    with pytest.raises(ConfigError, match="divisor=-1 is invalid"):
        lab.veid.deploy({"divisor": -1})
    with pytest.raises(ConfigError, match="rev-99"):
        lab.veid.rollback(to="rev-99")
    with pytest.raises(ConfigError, match="variant='gamma'"):
        lab.fault("veid-bad-revision", SERVICE_NAME, variant="gamma")
    with pytest.raises(ConfigError, match="not the VEID service"):
        lab.fault("veid-bad-revision", "virtengine-node-0")


def test_fault_collapses_scores_and_rollback_restores(lab):
    with lab.fault("veid-bad-revision", SERVICE_NAME, variant="divisor-1000") as fault:
        bad = lab.veid.current()
        assert bad["author"] == "deploy-bot"
        assert lab.veid.diff(fault.good["id"]).to_dict("records") == [
            {"setting": "divisor", fault.good["id"]: 255.0, bad["id"]: 1000}]
        assert wait_for(scored(lab, 25))
        assert lab.veid.drift_test().drift
        inputs = lab.veid.input_stats().set_index("statistic")
        assert inputs.iloc[:, 0]["max"] < 0.3
        assert lab.veid.model_check()["ok"].all()  # the model is fine: only the inputs changed
        assert wait_for(lambda: lab.veid.metric("virtengine_veid_scoring_score_avg") < 0.2)
        assert Journal(lab.config.home).read(fault.id)["state"] == "active"
    assert lab.veid.current()["config"] == DEFAULT_CONFIG
    assert Journal(lab.config.home).read(fault.id)["state"] == "reverted"
    assert wait_for(scored(lab, 25))
    # Polled like verify(): one test in a hundred flags drift by chance at alpha 0.01, a real drift every time.
    assert wait_for(lambda: not lab.veid.drift_test().drift, 15)


def test_tampered_model_fails_requests(lab):
    with lab.fault("veid-bad-revision", SERVICE_NAME, variant="tampered-model"):
        check = lab.veid.model_check().set_index("check")
        assert not check.loc["sha256 matches the manifest", "ok"]
        assert lab.veid.metric("virtengine_veid_model_loaded", version="1.0.0") == 0
        with pytest.raises(VeidError, match="HTTP 503"):
            lab.veid.score(seed=1)
        errors = lab.veid.metric("virtengine_veid_scoring_errors_total")
        assert wait_for(lambda: lab.veid.metric("virtengine_veid_scoring_errors_total") > errors)
    assert lab.veid.metric("virtengine_veid_model_loaded", version="1.0.0") == 1


CHILD = textwrap.dedent("""
    import sys, time
    from incidentlab import Lab
    lab = Lab.connect("local", home=sys.argv[1])
    fault = lab.fault("veid-bad-revision", "virtengine-veid", variant="channel-order").inject()
    print(fault.id, flush=True)
    time.sleep(60)
""")


def test_sigkilled_injector_cleaned_up(lab):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(lab.config.home)], stdout=subprocess.PIPE, text=True)
    try:
        fault_id = child.stdout.readline().strip()
        assert fault_id.startswith("veid-bad-revision"), fault_id
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert lab.veid.current()["config"]["channel_order"] == "BGR"  # the fault outlived its process

    env = {**os.environ, "INCIDENTLAB_HOME": str(lab.config.home)}
    result = subprocess.run([sys.executable, "-m", "incidentlab", "cleanup"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert fault_id in result.stdout
    assert lab.veid.current()["config"] == DEFAULT_CONFIG
    assert Journal(lab.config.home).read(fault_id)["state"] == "reverted"


def test_watch_counts_stream_requests(lab):
    frame = lab.veid.watch(count=2, interval=0.5)
    assert len(frame) == 2
    assert list(frame.columns) == ["time", "score_avg", "requests", "rejections", "errors", "rejection_ratio"]
    assert frame["requests"].sum() > 0  # the background stream scores without the learner
    assert (frame["rejections"] <= frame["requests"]).all()


def test_stopped_or_paused_service_errors(lab):
    lab.stop(SERVICE_NAME)
    try:
        with pytest.raises(VeidError, match=r"refused the connection .* lab.start\('virtengine-veid'\)"):
            lab.veid.revisions()
    finally:
        lab.start(SERVICE_NAME)
    assert lab.veid.current()["id"]  # the revisions survive the restart
    lab.pause(SERVICE_NAME)
    try:
        with pytest.raises(VeidError, match="did not respond .* paused"):
            lab.veid.current()
    finally:
        lab.unpause(SERVICE_NAME)

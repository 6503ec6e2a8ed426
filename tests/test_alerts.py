"""Alerts on a real incident: Prometheus with the lab's time-scaled rules, and the lab's own evaluation."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from incidentlab import Lab
from incidentlab.monitoring.alerts import load_rules, scale_rules

TARGET = "virtengine-node-2"


def needs_prometheus() -> None:
    if shutil.which("prometheus") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is not installed; CI must run this: run `bash .ci/prometheus-setup.sh`")
        pytest.skip("prometheus is not installed (apt-get install -y prometheus)")


def firing(frame, name):
    return not frame[(frame["alertname"] == name) & (frame["state"] == "firing")].empty


def wait_for(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_scaled_rules_shrink_windows_and_for():
    text = "      - alert: ChainSlow\n        expr: rate(x[5m]) / rate(y[5m]) > 3\n        for: 2m\n"
    scaled = scale_rules(text, 0.1)
    assert "[30s]" in scaled
    assert "for: 12s" in scaled
    assert "> 0.3" in scaled


def test_rules_load_with_for_durations():
    rules = {rule.name: rule for rule in load_rules()}
    assert rules["TargetDown"].for_seconds == 30
    assert rules["ChainHalted"].labels["severity"] == "critical"


def test_prometheus_and_embedded_agree_on_stopped_validator(tmp_path):
    needs_prometheus()
    lab = Lab.connect("local", home=tmp_path / "lab", time_scale=0.1)
    try:
        lab.monitor.start_prometheus()
        # Every service with a /metrics endpoint is a target: the four validators and the gateway.
        targets = sum(1 for service in lab.status()["services"] if service.get("metrics"))
        assert wait_for(lambda: len(lab.query("up")) == targets, 30)
        lab.alerts(source="embedded")  # start the lab's own evaluation before the incident
        time.sleep(1)
        assert not firing(lab.alerts(source="prometheus"), "TargetDown")
        assert not firing(lab.alerts(source="embedded"), "TargetDown")

        with lab.fault("stop", TARGET):
            assert wait_for(lambda: firing(lab.alerts(source="prometheus"), "TargetDown"), 30)
            assert wait_for(lambda: firing(lab.alerts(source="embedded"), "TargetDown"), 30)
            prometheus = lab.alerts(source="prometheus")
            embedded = lab.alerts(source="embedded")
            down = prometheus[prometheus["alertname"] == "TargetDown"]["target"].tolist()
            assert any(str(lab.status()["services"][2]["metrics"]).split("/")[2] in str(t) for t in down)
            assert embedded[embedded["alertname"] == "TargetDown"]["target"].tolist() == [TARGET]

        assert wait_for(lambda: not firing(lab.alerts(source="prometheus"), "TargetDown"), 30)
        assert wait_for(lambda: lab.alerts(source="embedded").empty
                        or not firing(lab.alerts(source="embedded"), "TargetDown"), 30)
    finally:
        lab.down()
    assert lab.monitor.prometheus() is None

"""The VeidScoreDrop alert on a real score collapse: the lab's own evaluation, and Prometheus where installed."""

from __future__ import annotations

import shutil
import time

import pytest

from incidentlab import Lab
from incidentlab.monitoring.alerts import load_rules
from incidentlab.veid import SERVICE_NAME


def firing(frame, name):
    return not frame[(frame["alertname"] == name) & (frame["state"] == "firing")].empty


def wait_for(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def lab(tmp_path):
    lab = Lab.connect("local", home=tmp_path / "lab", time_scale=0.1)
    try:
        yield lab
    finally:
        try:
            lab.halt()
        finally:
            lab.down()


def test_score_drop_rule_loads():
    rule = {rule.name: rule for rule in load_rules()}["VeidScoreDrop"]
    assert "virtengine_veid_scoring_score_avg" in rule.expr
    assert rule.for_seconds == 120


def test_score_drop_fires_and_resolves(lab):
    with_prometheus = shutil.which("prometheus") is not None
    if with_prometheus:
        lab.monitor.start_prometheus()
    lab.alerts(source="embedded")  # start the lab's own evaluation before the incident
    time.sleep(1)
    assert not firing(lab.alerts(source="embedded"), "VeidScoreDrop")

    with lab.fault("veid-bad-revision", SERVICE_NAME, variant="divisor-1000"):
        # The rule's `for: 2m` is 12 s at time_scale 0.1, after the window of scores turns over.
        assert wait_for(lambda: firing(lab.alerts(source="embedded"), "VeidScoreDrop"), 40)
        embedded = lab.alerts(source="embedded")
        assert embedded[embedded["alertname"] == "VeidScoreDrop"]["target"].tolist() == [SERVICE_NAME]
        if with_prometheus:
            assert wait_for(lambda: firing(lab.alerts(source="prometheus"), "VeidScoreDrop"), 40)

    assert wait_for(lambda: not firing(lab.alerts(source="embedded"), "VeidScoreDrop"), 30)

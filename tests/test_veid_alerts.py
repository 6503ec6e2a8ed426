"""The VEID alerts on real faults: VeidScoreDrop on a score collapse, VeidScoringErrors on a tampered model."""

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


def test_veid_rules_load():
    rules = {rule.name: rule for rule in load_rules()}
    assert "virtengine_veid_scoring_score_avg" in rules["VeidScoreDrop"].expr
    assert rules["VeidScoreDrop"].for_seconds == 120
    assert "virtengine_veid_scoring_errors_total" in rules["VeidScoringErrors"].expr
    assert rules["VeidScoringErrors"].for_seconds == 60


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


def test_scoring_errors_fire_on_tampered_model(lab):
    with_prometheus = shutil.which("prometheus") is not None
    if with_prometheus:
        lab.monitor.start_prometheus()
    lab.alerts(source="embedded")
    time.sleep(1)
    assert not firing(lab.alerts(source="embedded"), "VeidScoringErrors")

    with lab.fault("veid-bad-revision", SERVICE_NAME, variant="tampered-model"):
        # No score is produced, so only the error counter can raise an alert.
        assert wait_for(lambda: firing(lab.alerts(source="embedded"), "VeidScoringErrors"), 40)
        assert not firing(lab.alerts(source="embedded"), "VeidScoreDrop")
        if with_prometheus:
            assert wait_for(lambda: firing(lab.alerts(source="prometheus"), "VeidScoringErrors"), 40)

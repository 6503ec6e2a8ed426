"""The debrief: tables, phases and the postmortem computed from incident records with known timelines."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import papermill
import pytest

from incidentlab.incident.debrief import Debrief
from incidentlab.incident.record import Incident, IncidentStore

T0 = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "05-debrief-postmortem.ipynb"


def record(store, scenario, category, seconds):
    """Save an incident whose probe fails, ack, action and recovery come ``seconds`` after the fault."""
    probe, ack, action, recovered = seconds
    incident = Incident(id=store.new_id(T0), scenario=scenario, title=f"{scenario} drill", learner="ana")
    incident.add_event("fault_injected", "lab", "fault", time=T0)
    incident.add_event("probe_failed", "probe", "refused", time=T0 + dt.timedelta(seconds=probe))
    incident.add_event("acknowledged", "learner", "by ana", time=T0 + dt.timedelta(seconds=ack))
    incident.set_severity("SEV-2", time=T0 + dt.timedelta(seconds=ack))
    incident.add_event("action", "learner", "start virtengine-node-1", time=T0 + dt.timedelta(seconds=action))
    incident.add_event("recovery_verified", "probe", "checks passed", time=T0 + dt.timedelta(seconds=recovered))
    incident.set_status("Resolved", time=T0 + dt.timedelta(seconds=recovered))
    incident.decisions = {"diagnosis": {"category": category, "target": "virtengine-node-1"},
                          "root_cause": "validator stopped",
                          "action_items": [{"type": "prevent", "text": "restart policy"}]}
    incident.impact = {"blocks missed": 7}
    store.save(incident)
    return incident


@pytest.fixture
def home(tmp_path):
    store = IncidentStore(tmp_path)
    record(store, "node-down", "container or orchestration", (2, 10, 20, 30))
    record(store, "node-down", "container or orchestration", (4, 6, 40, 50))
    record(store, "high-error-rate", "network", (1, 3, 5, 9))
    return tmp_path


def test_metrics_review_medians(home):
    review = Debrief(home).metrics_review()
    assert review.loc["node-down", "incidents"] == 2
    assert review.loc["node-down", "detect (s)"] == 3.0       # median of 2 and 4
    assert review.loc["node-down", "recover (s)"] == 40.0     # median of 30 and 50
    assert review.loc["high-error-rate", "acknowledge (s)"] == 2.0  # first failing probe to ack


def test_root_causes_and_phases(home):
    debrief = Debrief(home)
    causes = dict(zip(debrief.root_causes()["root cause category"], debrief.root_causes()["incidents"]))
    assert causes == {"container or orchestration": 2, "network": 1}
    phases = debrief.phases().set_index("incident")
    first = phases.iloc[0]
    assert (first["detect"], first["acknowledge"], first["mitigate"], first["recover"]) == (2.0, 8.0, 10.0, 10.0)


def test_postmortem_numbers_come_from_records(home):
    text = Debrief(home).postmortem()
    assert text.count("## INC-20261204-") == 3
    assert "- blocks missed: 7" in text
    assert "(prevent) restart policy" in text
    assert "| node-down | 2 | 2 | 3.0 |" in text


def test_empty_home_says_so(tmp_path):
    assert "No incident record was found" in Debrief(tmp_path).postmortem()


def test_report_command_writes_file(home, tmp_path):
    out = tmp_path / "summary.md"
    result = subprocess.run([sys.executable, "-m", "incidentlab", "--home", str(home), "report", "--out", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert out.read_text().startswith("# Incident simulation summary")
    assert "node-down" in result.stdout


@pytest.mark.notebook
def test_debrief_notebook_under_nbval(home, tmp_path):
    prepared = tmp_path / NOTEBOOK.name
    papermill.execute_notebook(str(NOTEBOOK), str(prepared), parameters={"mode": "batch"}, prepare_only=True)
    env = {**os.environ, "INCIDENTLAB_HOME": str(home)}
    result = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", str(prepared)],
                            cwd=str(NOTEBOOK.parent), env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (home / "postmortems" / "simulation-summary.md").exists()

"""Decision forms: created, filled and submitted programmatically, on their own and in a running simulation."""

from __future__ import annotations

from pathlib import Path

import ipywidgets as widgets
import pytest

from incidentlab import Lab
from incidentlab.errors import AnswerFileError, ConfigError
from incidentlab.incident.widgets import DecisionForm, Field, parse_action_items

ANSWERS = Path(__file__).resolve().parent.parent / "data" / "answers"


def triage_form(recorded: list) -> DecisionForm:
    fields = [Field("severity", widgets.Dropdown(options=["SEV-1", "SEV-2"], value=None)),
              Field("failure_rate", widgets.FloatText(value=0.0))]
    return DecisionForm("triage", "Triage", fields, recorded.append)


def test_form_invalid_value_not_recorded():
    recorded = []
    form = triage_form(recorded)
    form.fields["severity"].widget.value = "SEV-2"
    form.fields["failure_rate"].widget.value = 3.0
    form.button.click()
    assert recorded == []
    assert "0 to 1" in form.fields["failure_rate"].error.value
    assert form.fields["severity"].error.value == ""
    assert "Not recorded" in form.message.value


def test_form_missing_required_field():
    form = triage_form([])
    assert form.submit() is None
    assert "SEV-1" in form.fields["severity"].error.value


def test_form_valid_values_recorded():
    recorded = []
    form = triage_form(recorded)
    form.submit()
    form.fields["severity"].widget.value = "SEV-1"
    form.fields["failure_rate"].widget.value = 0.25
    form.button.click()
    assert recorded == [{"severity": "SEV-1", "failure_rate": 0.25}]
    assert form.fields["severity"].error.value == ""
    assert "Recorded at" in form.message.value


def test_form_simulation_error_beside_field():
    def reject_service(decision):
        raise AnswerFileError("triage", "triage: 'ledger' is not a service of this scenario", "severity")

    form = DecisionForm("triage", "Triage", [Field("severity", widgets.Dropdown(options=["SEV-1"], value="SEV-1"))],
                        reject_service)
    assert form.submit() is None
    assert "ledger" in form.fields["severity"].error.value


def test_action_items_one_per_line():
    text = "prevent: supervise validators\n\n- mitigate: alert on missed blocks\njust text"
    assert parse_action_items(text) == [
        {"type": "prevent", "text": "supervise validators"},
        {"type": "mitigate", "text": "alert on missed blocks"},
        {"type": "", "text": "just text"},
    ]
    assert parse_action_items("  ") is None


@pytest.fixture
def lab(tmp_path):
    lab = Lab.connect("local", home=tmp_path / "lab", time_scale=0.1)
    try:
        yield lab
    finally:
        lab.down()


@pytest.mark.integration
def test_forms_record_interactive_decisions(lab):
    sim = lab.simulation("node-down", learner="ada", seed=2)
    sim.inject()
    try:
        triage = sim.form("triage")
        triage.fields["severity"].widget.value = "SEV-3"
        triage.fields["affected_services"].widget.value = ("chain-rpc",)
        triage.fields["failure_rate"].widget.value = 0.25
        triage.button.click()
        assert sim.incident.severity == "SEV-3", triage.message.value

        update = sim.form("update")
        update.fields["conditions"].widget.value = "Blocks are slower"
        update.button.click()
        assert "say what the responders are doing" in update.fields["actions"].error.value
        update.fields["actions"].widget.value = "Checking the validators"
        update.button.click()

        diagnosis = sim.form("diagnosis")
        diagnosis.fields["category"].widget.value = "container or orchestration"
        diagnosis.fields["target"].widget.value = sim.variant["targets"][0]
        diagnosis.button.click()

        status = sim.form("status")
        status.fields["status"].widget.value = "Identified"
        status.button.click()

        notes = sim.form("postmortem")
        notes.fields["action_items"].widget.value = "fix: everything"
        notes.button.click()
        assert "prevent, mitigate or process" in notes.fields["action_items"].error.value
        notes.fields["action_items"].widget.value = "prevent: supervise validators"
        notes.fields["root_cause"].widget.value = "A validator process was stopped."
        notes.button.click()
    finally:
        sim.close()
    kinds = [event.kind for event in sim.incident.timeline]
    for kind in ("severity_set", "status_update", "diagnosis", "status_changed"):
        assert kind in kinds
    assert sim.incident.decisions["action_items"] == [{"type": "prevent", "text": "supervise validators"}]
    assert sim.incident.decisions["status_updates"][0]["actions"] == "Checking the validators"


@pytest.mark.integration
def test_batch_forms_build_no_widget(lab):
    sim = lab.simulation("node-down", learner="ada", seed=7, mode="batch",
                         answers_path=ANSWERS / "node-down-seed-7.yaml")
    sim.inject()
    try:
        decision = sim.form("triage")
        assert decision["severity"] == "SEV-1"
        assert sim.form("update")["conditions"]
        with pytest.raises(ConfigError, match="form 'chat' is unknown"):
            sim.form("chat")
    finally:
        sim.close()

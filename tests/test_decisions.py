"""Decision schemas, the decision file, the update cadence and the response target, without a lab."""

from __future__ import annotations

import datetime as _dt
import json

import pytest

from incidentlab.errors import AnswerFileError
from incidentlab.incident.communication import flag_overdue, record_update, response_check, update_cadence
from incidentlab.incident.decisions import decisions_filename, export_decisions, load_decisions, to_answers
from incidentlab.incident.record import Incident
from incidentlab.incident.report import render_report
from incidentlab.incident.schemas import check, errors, schema_for
from incidentlab.scenarios.answers import ACTION_ITEM_TYPES, ROOT_CAUSE_CATEGORIES, load_answers

T0 = _dt.datetime(2026, 12, 4, 12, 0, 0, tzinfo=_dt.timezone.utc)


def at(seconds: float) -> _dt.datetime:
    return T0 + _dt.timedelta(seconds=seconds)


def incident(time_scale: float = 0.01, severity: str | None = "SEV-1") -> Incident:
    """An incident whose fault is at T0, acknowledged 5 s later, with ``severity`` set at 10 s."""
    record = Incident(id="INC-20261204-001", scenario="node-down", title="Node down", learner="ada", seed=7,
                      created_at=T0, time_scale=time_scale)
    record.add_event("fault_injected", "lab", "two-down", time=at(0))
    record.add_event("probe_failed", "probe", "virtengine-node-1 (refused)", time=at(2))
    record.add_event("acknowledged", "learner", "by ada", time=at(5))
    if severity:
        record.set_severity(severity, time=at(10))
    return record


# -- schemas ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, field, value", [
    ("triage: {severity: SEV-9}", "triage.severity", "'SEV-9'"),
    ("triage: {severity: SEV-1, failure_rate: 1.5}", "triage.failure_rate", "1.5"),
    ("diagnosis: {category: cosmic rays}", "diagnosis.category", "'cosmic rays'"),
    ("status: [Investigating, Fixed]", "status[1]", "'Fixed'"),
    ("action_items: [{type: fix, text: restart it}]", "action_items[0].type", "'fix'"),
    ("status_updates: [{conditions: slow}]", "status_updates[0].actions", "missing"),
    ("actions: [{target: virtengine-node-1}]", "actions[0].action", "missing"),
    ("actions: [{action: start}]", "actions[0].target", "None"),
    ("severity: SEV-1", "severity", "'SEV-1'"),
])
def test_answers_file_errors_name_field_value_and_rule(tmp_path, text, field, value):
    path = tmp_path / "answers.yaml"
    path.write_text(text + "\n")
    with pytest.raises(AnswerFileError) as caught:
        load_answers(path)
    assert caught.value.field == field
    message = str(caught.value)
    assert str(path) in message
    assert f"field {field!r} has the invalid value {value};" in message


def test_example_answers_follow_schema():
    from incidentlab._resources import data_path

    for path in sorted(data_path("answers").glob("*.yaml")):
        load_answers(path)


def test_schema_enums_match_the_package_constants():
    definitions = schema_for("triage")["$defs"]
    assert tuple(definitions["diagnosis"]["properties"]["category"]["enum"]) == ROOT_CAUSE_CATEGORIES
    assert tuple(definitions["action_item"]["properties"]["type"]["enum"]) == ACTION_ITEM_TYPES


def test_errors_list_every_problem():
    problems = errors("triage", {"severity": "SEV-0", "failure_rate": -1, "colour": "red"})
    assert [field for field, _value, _rule in problems] == ["colour", "failure_rate", "severity"]
    with pytest.raises(AnswerFileError, match="the triage form: field 'colour'.*unknown field"):
        check("triage", {"severity": "SEV-1", "colour": "red"}, "the triage form")


# -- the decision file --------------------------------------------------------------------


def finished_incident() -> Incident:
    record = incident()
    record.decisions["triage"] = {"severity": "SEV-1", "affected_services": ["chain-rpc"],
                                  "user_impact": "no blocks", "failure_rate": 1.0}
    record.set_status("Identified", time=at(12))
    record.decisions["diagnosis"] = {"category": "container or orchestration", "target": "virtengine-node-1",
                                     "evidence": "exited 0"}
    record.add_event("action", "learner", "start virtengine-node-1", time=at(20), action="start",
                     target="virtengine-node-1", status="running", options={})
    record.add_event("action", "learner", "stop virtengine-node-2", time=at(21), action="stop",
                     target="virtengine-node-2", status="exited", options={"timeout": 10})
    record.decisions["action_items"] = [{"type": "prevent", "text": "supervise validators"}]
    return record


def test_decision_file_round_trip(tmp_path):
    data = export_decisions(finished_incident())
    path = tmp_path / "ada.json"
    path.write_text(json.dumps(data))
    loaded = load_decisions(path)
    answers = to_answers(loaded)
    assert answers["status"] == ["Identified"]
    assert answers["actions"] == [{"action": "start", "target": "virtengine-node-1"},
                                  {"action": "stop", "target": "virtengine-node-2", "timeout": 10}]
    answers_path = tmp_path / "answers.json"
    answers_path.write_text(json.dumps(answers))
    assert load_answers(answers_path)["diagnosis"]["target"] == "virtengine-node-1"


@pytest.mark.parametrize("change, field", [
    (lambda d: d.update(schema_version=2), "schema_version"),
    (lambda d: d.pop("learner"), "learner"),
    (lambda d: d["decisions"]["triage"].update(severity="SEV-7"), "decisions.triage.severity"),
    (lambda d: d["actions"][0].update(action="rm -rf /"), "actions[0].action"),
])
def test_decision_file_broken_field(tmp_path, change, field):
    data = export_decisions(finished_incident())
    change(data)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    with pytest.raises(AnswerFileError) as caught:
        load_decisions(path)
    assert caught.value.field == field


def test_decision_file_not_json(tmp_path):
    path = tmp_path / "half.json"
    path.write_text('{"schema": "incidentlab/decisions", ')
    with pytest.raises(AnswerFileError, match="half.json is not valid JSON"):
        load_decisions(path)


def test_decision_file_names_cannot_leave_the_folder():
    assert decisions_filename("../../etc/passwd", "node-down", 7) == "etc_passwd-node-down-seed-7.json"
    assert decisions_filename("", "x/y", 1) == "unnamed-x_y-seed-1.json"


# -- cadence and response target ---------------------------------------------------------------


def test_cadence_follows_the_severity_and_the_time_scale():
    assert update_cadence("SEV-1") == _dt.timedelta(minutes=15)
    assert update_cadence("SEV-3", 0.01) == _dt.timedelta(seconds=72)
    assert update_cadence(None) is None


def test_updates_late_ones_flagged():
    record = incident(time_scale=0.01)  # SEV-1 at 10 s: an update every 9 s, the first due at 19 s
    record_update(record, {"conditions": "no blocks", "actions": "checking validators"}, time=at(15))
    assert not [e for e in record.timeline if e.kind == "update_overdue"]
    record_update(record, {"conditions": "still none", "actions": "restarting"}, time=at(30))  # due at 24 s
    overdue = [e for e in record.timeline if e.kind == "update_overdue"]
    assert len(overdue) == 1
    assert overdue[0].time == at(24)
    assert overdue[0].data["late_s"] == pytest.approx(6.0)


def test_updates_promise_sets_due():
    record = incident(time_scale=1.0)
    record_update(record, {"conditions": "c", "actions": "a", "next_update_in_minutes": 1}, time=at(15))
    assert record.decisions["status_updates"][0]["next_update_due"] == "2026-12-04T12:01:15.000000Z"
    assert len(flag_overdue(record, until=at(80))) == 1
    assert flag_overdue(record, until=at(90)) == []  # flagged once per due time


def test_nothing_is_due_before_triage_or_after_resolution():
    record = incident(severity=None)
    assert flag_overdue(record, until=at(10_000)) == []
    record = incident(time_scale=0.01)
    record.set_status("Resolved", time=at(12))
    assert flag_overdue(record, until=at(10_000)) == []


def test_response_target_met_missed_or_pending():
    assert response_check(incident(time_scale=1.0))["met"] is True  # acknowledged 5 s after the fault
    quick = incident(time_scale=0.001)  # SEV-1 target 0.9 s
    assert response_check(quick) == {"target_s": pytest.approx(0.9), "response_s": 5.0, "met": False}
    assert response_check(incident(severity=None))["met"] is None


def test_report_shows_communication():
    record = incident(time_scale=0.01)
    record_update(record, {"conditions": "no blocks", "actions": "checking"}, time=at(15))
    record_update(record, {"conditions": "still none", "actions": "restarting"}, time=at(30))
    text = render_report(record)
    assert "**Response target:** met: fault injected to acknowledgement 5.0 s, target 9.0 s" in text
    assert "| still none | restarting |" in text
    assert "| **late** |" in text
    assert "was posted 6.0 s late" in text

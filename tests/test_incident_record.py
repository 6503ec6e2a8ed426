"""Incident record, timeline times, store ids and the Markdown report, each in a tmp lab home."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from incidentlab.errors import RecordError
from incidentlab.incident import (
    SEVERITY_LEVELS,
    Incident,
    IncidentStore,
    render_report,
    save_report,
)

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def node_down_incident(incident_id: str = "INC-20240501-001") -> Incident:
    """A node-down incident with a full timeline, added out of order on purpose."""
    incident = Incident(id=incident_id, scenario="node-down", title="Validator virtengine-node-1 down",
                        learner="ada", seed=7, created_at=at(-5))
    incident.add_event("recovery_verified", "probe", "virtengine-node-1 at height 131, catching_up false", at(95))
    incident.add_event("fault_injected", "lab", "stopped virtengine-node-1 (SIGTERM)", at(0), target="virtengine-node-1")
    incident.add_event("probe_failed", "probe", "virtengine-node-1 /status refused", at(12), error="refused")
    incident.add_event("acknowledged", "ada", "looking at node-1", at(40))
    incident.set_severity("SEV-3", time=at(45))
    incident.add_event("action", "ada", "lab.start('virtengine-node-1')", at(60))
    incident.add_event("note", "ada", "node-1 reports catching_up true", at(70), mitigated=True)
    incident.set_status("Resolved", time=at(120))
    return incident


# --- timeline and measured times -------------------------------------------------------------


def test_times_from_known_timeline():
    incident = node_down_incident()
    assert incident.time_to_detect == dt.timedelta(seconds=12)
    assert incident.time_to_acknowledge == dt.timedelta(seconds=28)
    assert incident.time_to_mitigate == dt.timedelta(seconds=70)
    assert incident.time_to_recover == dt.timedelta(seconds=95)
    assert incident.duration == dt.timedelta(seconds=120)
    assert incident.started_at == T0
    assert incident.resolved_at == at(120)


def test_detect_by_acknowledgement_before_probe():
    incident = Incident(id="INC-20240501-002", scenario="node-down", title="t")
    incident.add_event("fault_injected", "lab", "fault", at(0))
    incident.add_event("acknowledged", "ada", "saw it on the dashboard", at(5))
    incident.add_event("probe_failed", "probe", "refused", at(12))
    assert incident.time_to_detect == dt.timedelta(seconds=5)
    assert incident.time_to_acknowledge == dt.timedelta(0)


def test_times_missing_events_are_none():
    incident = Incident(id="INC-20240501-003", scenario="node-down", title="t")
    assert incident.time_to_detect is None
    assert incident.duration is None
    incident.add_event("fault_injected", "lab", "fault", at(0))
    incident.add_event("recovery_verified", "probe", "ok", at(30))
    assert incident.time_to_detect is None
    assert incident.time_to_acknowledge is None
    # Without an event marked mitigated=True, mitigation counts until recovery is verified.
    assert incident.time_to_mitigate == dt.timedelta(seconds=30)
    assert incident.time_to_recover == dt.timedelta(seconds=30)
    assert incident.duration == dt.timedelta(seconds=30)


def test_events_sorted_by_time_then_seq():
    incident = node_down_incident()
    incident.add_event("note", "ada", "second note at 40 s", at(40))
    keys = [(event.time, event.seq) for event in incident.timeline]
    assert keys == sorted(keys)
    same_time = [event.message for event in incident.timeline if event.time == at(40)]
    assert same_time == ["looking at node-1", "second note at 40 s"]
    assert incident.timeline[0].kind == "fault_injected"


def test_add_event_rejects_bad_input():
    incident = Incident(id="INC-20240501-004", scenario="node-down", title="t")
    with pytest.raises(RecordError, match="unknown timeline event kind 'alert'"):
        incident.add_event("alert", "probe", "x")
    with pytest.raises(RecordError, match="not an aware datetime"):
        incident.add_event("note", "ada", "x", dt.datetime(2024, 5, 1, 12))
    with pytest.raises(RecordError, match="cannot be stored as JSON"):
        incident.add_event("note", "ada", "x", at(1), when=object())
    with pytest.raises(RecordError, match="severity 'SEV-5' is unknown"):
        incident.set_severity("SEV-5")
    with pytest.raises(RecordError, match="status 'Fixed' is unknown"):
        incident.set_status("Fixed")
    assert incident.timeline == []


def test_severity_table():
    assert SEVERITY_LEVELS["SEV-1"].respond_within == dt.timedelta(minutes=15)
    assert SEVERITY_LEVELS["SEV-2"].respond_within == dt.timedelta(minutes=30)
    assert SEVERITY_LEVELS["SEV-3"].respond_within == dt.timedelta(hours=2)
    assert SEVERITY_LEVELS["SEV-4"].respond_within == dt.timedelta(hours=24)
    assert SEVERITY_LEVELS["SEV-1"].description == "complete outage"


# --- JSON ------------------------------------------------------------------------------------


def test_json_round_trip():
    incident = node_down_incident()
    incident.impact = {"blocks_missed": 0, "requests_failed": 14}
    incident.decisions = {"root_cause": "validator process stopped"}
    data = json.loads(json.dumps(incident.to_json()))

    assert data["schema_version"] == 1
    assert data["measured_s"]["time_to_detect"] == 12.0
    assert data["timeline"][0]["time"] == "2024-05-01T12:00:00Z"
    assert Incident.from_json(data) == incident
    assert Incident.from_json(json.dumps(data)) == incident


def test_from_json_names_source_and_field():
    data = node_down_incident().to_json()
    data["timeline"][1]["time"] = "yesterday"
    with pytest.raises(RecordError) as caught:
        Incident.from_json(data, source="/lab/incidents/INC-20240501-001.json")
    message = str(caught.value)
    assert "/lab/incidents/INC-20240501-001.json" in message
    assert "'timeline[1].time'" in message
    assert "'yesterday'" in message


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("schema_version", 2, "'schema_version' is 2, expected 1"),
        ("severity", "SEV-9", "'severity' is 'SEV-9'"),
        ("status", "Done", "'status' is 'Done'"),
        ("seed", "7", "'seed' is '7', expected an integer or null"),
        ("impact", None, "'impact' is None, expected an object"),
    ],
)
def test_from_json_rejects_bad_fields(field, value, expected):
    data = node_down_incident().to_json()
    data[field] = value
    with pytest.raises(RecordError, match=expected.replace("(", r"\(")):
        Incident.from_json(data, source="record.json")


def test_from_json_missing_field():
    data = node_down_incident().to_json()
    del data["title"]
    with pytest.raises(RecordError, match="record.json: field 'title' is missing"):
        Incident.from_json(data, source="record.json")


# --- store -----------------------------------------------------------------------------------


def test_new_id_sequence(tmp_path):
    store = IncidentStore(tmp_path)
    first = store.new_id(T0)
    second = store.new_id(T0)
    assert (first, second) == ("INC-20240501-001", "INC-20240501-002")
    assert store.new_id(T0 + dt.timedelta(days=1)) == "INC-20240502-001"
    # The date is the UTC date, whatever the caller's time zone.
    east = dt.timezone(dt.timedelta(hours=9))
    assert store.new_id(dt.datetime(2024, 5, 2, 8, 0, tzinfo=east)) == "INC-20240501-003"
    with pytest.raises(RecordError, match="not an aware datetime"):
        store.new_id(dt.datetime(2024, 5, 1))


def test_new_id_continues_after_saved_records(tmp_path):
    store = IncidentStore(tmp_path)
    store.save(node_down_incident("INC-20240501-007"))
    assert store.new_id(T0) == "INC-20240501-008"


ALLOCATE = """
import sys, time
from pathlib import Path
import datetime as dt
from incidentlab.incident import IncidentStore
home, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.002)
store = IncidentStore(home)
now = dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc)
print("\\n".join(store.new_id(now) for _ in range(100)))
"""


def test_new_id_unique_across_two_processes(tmp_path):
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{index}" for index in range(2)]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    processes = [
        subprocess.Popen([sys.executable, "-c", ALLOCATE, str(tmp_path / "lab"), str(flag), str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for flag in ready
    ]
    try:
        # Release both at once, after both have imported incidentlab.
        deadline = time.monotonic() + 20
        while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        outputs = [process.communicate(timeout=30) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
    ids = [line for stdout, _ in outputs for line in stdout.split()]
    assert len(ids) == 200
    assert sorted(ids) == [f"INC-20240501-{number:03d}" for number in range(1, 201)]


def test_save_load_list(tmp_path):
    store = IncidentStore(tmp_path)
    incident = node_down_incident(store.new_id(T0))
    path = store.save(incident)
    assert path == tmp_path / "incidents" / "INC-20240501-001.json"
    assert store.load(incident.id) == incident
    assert [item.id for item in store.list()] == [incident.id]


def test_corrupt_record_error_and_skip(tmp_path, caplog):
    store = IncidentStore(tmp_path)
    store.save(node_down_incident("INC-20240501-001"))
    corrupt = tmp_path / "incidents" / "INC-20240501-002.json"
    corrupt.write_text('{"schema_version": 1, "id": ', encoding="utf-8")

    with pytest.raises(RecordError) as caught:
        store.load("INC-20240501-002")
    message = str(caught.value)
    assert str(corrupt) in message
    assert "not valid JSON" in message
    assert "move it out of" in message

    with caplog.at_level(logging.WARNING, logger="incidentlab.incident.record"):
        listed = store.list()
    assert [item.id for item in listed] == ["INC-20240501-001"]
    assert str(corrupt) in caplog.text


def test_load_missing_and_malformed_id(tmp_path):
    store = IncidentStore(tmp_path)
    with pytest.raises(RecordError, match="no incident record INC-20240501-009"):
        store.load("INC-20240501-009")
    with pytest.raises(RecordError, match=r"incident id '\.\./x' is malformed"):
        store.load("../x")


# --- report ----------------------------------------------------------------------------------


def section(markdown: str, title: str) -> str:
    """Return the body of the ``## title`` section."""
    body = markdown.split(f"\n## {title}\n", 1)[1]
    return body.split("\n## ", 1)[0].strip()


def test_render_missing_decisions_not_recorded():
    incident = Incident(id="INC-20240501-001", scenario="node-down", title="Validator down", created_at=T0)
    incident.add_event("fault_injected", "lab", "stopped virtengine-node-1", at(0))
    markdown = render_report(incident)

    for title in ("Root Cause", "Action Items", "Lessons Learned", "Impact", "Resolution"):
        assert section(markdown, title) == "not recorded", title
    assert "- **Severity:** not recorded" in markdown
    assert "- **Resolved:** not resolved" in markdown
    assert "**Time to detect** (fault injected to the first failing probe or acknowledgement): not measured" in markdown


def test_render_full_report():
    incident = node_down_incident()
    incident.impact = {"blocks_missed": 0, "requests_failed": 14, "validator_uptime": 0.875}
    incident.decisions = {
        "root_cause": "virtengine-node-1 was stopped",
        "action_items": [{"type": "prevent", "description": "alert on peers < 3", "owner": "ops"}, "write a runbook"],
        "lessons_learned": "compare heights with peers",
    }
    incident.add_event("note", "ada", "a | pipe\nand a newline", at(50))
    markdown = render_report(incident)

    assert markdown.startswith("# Incident Report: Validator virtengine-node-1 down\n")
    assert "- **Incident ID:** INC-20240501-001" in markdown
    assert "- **Severity:** SEV-3 (limited impact, respond within 2 h)" in markdown
    assert "- **Status:** Resolved" in markdown
    assert "- **Started:** 2024-05-01 12:00:00 UTC" in markdown
    assert "- **Duration:** 2 min 00.0 s" in markdown
    assert "- **Requests failed:** 14" in markdown
    assert "- **Validator uptime:** 0.875" in markdown
    assert "| Time (UTC) | Source | Event |" in markdown
    assert "| 12:00:12.000 | probe | probe failed: virtengine-node-1 /status refused |" in markdown
    assert "| 12:00:50.000 | ada | note: a \\| pipe and a newline |" in markdown
    assert "**Time to detect** (fault injected to the first failing probe or acknowledgement): 12.0 s" in markdown
    assert "**Time to acknowledge** (first failing probe to acknowledgement): 28.0 s" in markdown
    assert "**Time to mitigate** (fault injected to the event marked mitigated, else to recovery verified): 1 min 10.0 s" in markdown
    assert "**Time to recover** (fault injected to recovery verified by probes): 1 min 35.0 s" in markdown
    assert section(markdown, "Root Cause") == "virtengine-node-1 was stopped"
    assert section(markdown, "Resolution").splitlines() == [
        "- 12:01:00.000 UTC, ada: lab.start('virtengine-node-1')",
        "- 12:01:35.000 UTC, recovery verified: virtengine-node-1 at height 131, catching_up false",
    ]
    assert section(markdown, "Action Items").splitlines() == [
        "- [ ] (prevent) alert on peers < 3 (owner: ops)",
        "- [ ] write a runbook",
    ]
    assert section(markdown, "Lessons Learned") == "- compare heights with peers"
    assert "not recorded" not in markdown


def test_save_report_writes_both(tmp_path):
    store = IncidentStore(tmp_path)
    incident = node_down_incident(store.new_id(T0))
    md_path, json_path = save_report(incident, store)

    assert md_path == tmp_path / "incidents" / "INC-20240501-001.md"
    assert json_path == tmp_path / "incidents" / "INC-20240501-001.json"
    assert md_path.read_text(encoding="utf-8") == render_report(incident)
    assert store.load(incident.id) == incident
    leftovers = [path.name for path in (tmp_path / "incidents").iterdir() if path.name.endswith(".tmp")]
    assert leftovers == []

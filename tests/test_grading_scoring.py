"""Scoring of incident records against the rubric: partial credit and a reason per item."""

from __future__ import annotations

import pytest

from incidentlab.grading.scenarios import load_scenarios
from incidentlab.grading.scoring import score_record

ALL_KINDS = ("fault_injected", "acknowledged", "severity_set", "status_changed", "diagnosis", "action",
             "recovery_verified")


def event(kind: str, message: str = "", **data) -> dict:
    return {"time": "2026-12-04T21:40:00Z", "seq": 0, "kind": kind, "source": "lab", "message": message, "data": data}


def record(severity="SEV-3", category="container or orchestration", target="virtengine-node-2",
           kinds=ALL_KINDS, updates=()) -> dict:
    timeline = [event(kind, "start virtengine-node-2" if kind == "action" else "") for kind in kinds]
    timeline += [event("status_update", **fields) for fields in updates]
    return {"severity": severity, "decisions": {"diagnosis": {"category": category, "target": target}},
            "timeline": timeline, "measured_s": {}}


COMPLETE_UPDATE = {"status": "Investigating", "conditions": "slow blocks", "actions": "probing",
                   "needs": "none", "next_update_due": "2026-12-04T21:41:00Z"}


@pytest.fixture(scope="module")
def node_down():
    key = load_scenarios()["node-down"]
    return key, key.variant(2)  # one-down: virtengine-node-2, SEV-3


def scores(key, variant, data) -> dict:
    return {item.item: item for item in score_record(key.rubric, variant, data)}


def test_all_right_scores_full(node_down):
    key, variant = node_down
    result = scores(key, variant, record(updates=[COMPLETE_UPDATE, COMPLETE_UPDATE]))
    assert sum(item.points for item in result.values()) == key.max_points
    assert all(item.verdict == "right" for item in result.values())
    assert result["remediation"].reason.startswith("Your actions (start virtengine-node-2) fixed it")


def test_severity_one_level_off_is_half(node_down):
    key, variant = node_down
    item = scores(key, variant, record(severity="SEV-2"))["severity"]
    assert (item.points, item.verdict) == (10.0, "partial")
    assert item.reason == "Severity SEV-2 is one level from SEV-3: 1 of 4 validators (10 of 40 voting power) offline."


def test_severity_far_off_or_missing_is_zero(node_down):
    key, variant = node_down
    assert scores(key, variant, record(severity="SEV-1"))["severity"].points == 0
    missing = scores(key, variant, record(severity=None))["severity"]
    assert missing.points == 0
    assert "(none)" in missing.reason


def test_wrong_target_gets_category_half(node_down):
    key, variant = node_down
    item = scores(key, variant, record(target="virtengine-node-0"))["root_cause"]
    assert (item.points, item.verdict) == (12.5, "partial")
    assert "virtengine-node-0 is not a faulty target" in item.reason


def test_no_diagnosis_scores_zero(node_down):
    key, variant = node_down
    data = record()
    data["decisions"] = {}
    item = scores(key, variant, data)["root_cause"]
    assert item.points == 0
    assert "expected container or orchestration on virtengine-node-2" in item.reason


def test_unverified_recovery_scores_zero(node_down):
    key, variant = node_down
    kinds = tuple(kind for kind in ALL_KINDS if kind != "recovery_verified")
    result = scores(key, variant, record(kinds=kinds))
    assert result["remediation"].points == 0
    assert "did not verify a recovery" in result["remediation"].reason
    assert result["timeline"].points == pytest.approx(15 * 5 / 6, abs=0.01)
    assert result["timeline"].reason == "The timeline misses recovery_verified."


def test_status_updates_late_missed_incomplete(node_down):
    key, variant = node_down
    incomplete = {**COMPLETE_UPDATE, "conditions": ""}
    data = record(updates=[COMPLETE_UPDATE, COMPLETE_UPDATE, incomplete])
    data["timeline"] += [event("update_overdue", posted=True), event("update_overdue", posted=False)]
    item = scores(key, variant, data)["status_updates"]
    # Four updates were due (three posted, one missed); one was late and one incomplete.
    assert item.points == pytest.approx(10 * 1 / 4)
    assert item.verdict == "partial"
    assert "1 update(s) were posted late" in item.reason
    assert "1 update(s) that were due were never posted" in item.reason
    assert "1 of 3 update(s) leave one of conditions, actions empty" in item.reason


def test_no_status_update_says_so(node_down):
    key, variant = node_down
    item = scores(key, variant, record())["status_updates"]
    assert item.points == 0
    assert "the incident record has no status update" in item.reason


def test_two_down_accepts_either_target():
    key = load_scenarios()["node-down"]
    variant = key.variant(7)  # two-down: virtengine-node-1 and virtengine-node-3
    for target in variant["targets"]:
        assert scores(key, variant, record(severity="SEV-1", target=target))["root_cause"].points == 25


def test_status_updates_scored_on_learner_times(node_down):
    """The replay posts every update at the grader's pace; the learner's own times decide lateness."""
    key, variant = node_down
    replayed = record(updates=[COMPLETE_UPDATE, COMPLETE_UPDATE])  # on time in the replay
    severity = {**event("severity_set", severity="SEV-3"), "time": "2026-12-04T21:40:00Z"}
    forged = {**event("update_overdue", posted=False), "time": "2026-12-04T21:40:01Z"}  # flags are recomputed
    updates = [{**COMPLETE_UPDATE, "time": "2026-12-04T21:40:30Z"},  # due by 21:41:12 at time_scale 0.01
               {**COMPLETE_UPDATE, "time": "2026-12-04T21:43:00Z"}]  # due by 21:41:42: posted late
    submission = {"time_scale": 0.01, "timeline": [severity, forged], "decisions": {"status_updates": updates}}
    item = {i.item: i for i in score_record(key.rubric, variant, replayed, submission)}["status_updates"]
    assert item.points == pytest.approx(10 * 1 / 2)
    assert "1 update(s) were posted late" in item.reason
    assert "never posted" not in item.reason

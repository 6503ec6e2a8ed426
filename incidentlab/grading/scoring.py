"""Scoring: an executed notebook's incident record against the scenario's rubric, item by item.

Pure functions on plain data; the record is Incident.to_json() as the report cell emitted it.
"""

from __future__ import annotations

import dataclasses
import logging
import string

from ..incident.record import SEVERITY_LEVELS

__all__ = ["ItemScore", "score_record"]

logger = logging.getLogger(__name__)

_LEVELS = list(SEVERITY_LEVELS)


@dataclasses.dataclass(frozen=True)
class ItemScore:
    """Points earned on one rubric item, out of ``max_points``, with the verdict and the feedback sentence."""

    item: str
    points: float
    max_points: float
    verdict: str
    reason: str


def score_record(rubric: list[dict], variant: dict, record: dict, submission: dict | None = None) -> list[ItemScore]:
    """Score ``record`` on every rubric item and return one ItemScore per item, in rubric order.

    ``variant`` is the one the scenario file draws for the seed (ScenarioKey.variant), so that
    the expected answers never come from the submission. ``submission`` is the learner's
    decision file: the replay runs at the grader's pace, so the status updates are scored on
    the times of the learner's own run, with the overdue flags computed again from them.
    """
    scores = []
    for item in rubric:
        source = record
        if item["item"] == "status_updates" and submission is not None:
            source = _learner_communication(submission)
        fraction, values = _SCORERS[item["item"]](item, variant, source)
        verdict = "partial"
        if fraction >= 1:
            verdict = "right"
        elif fraction <= 0:
            verdict = "wrong"
        template = item.get(verdict) or item["wrong"]
        reason = string.Formatter().vformat(template, (), _Values(values))
        scores.append(ItemScore(item["item"], round(item["points"] * fraction, 2), float(item["points"]), verdict, reason))
    return scores


def _severity(item: dict, variant: dict, record: dict) -> tuple[float, dict]:
    given, expected = record.get("severity"), variant["expected_severity"]
    values = {"given": given or "(none)", "expected": expected, "strength": variant["strength"]}
    if given is None:
        return 0.0, values
    distance = abs(_LEVELS.index(given) - _LEVELS.index(expected))
    return {0: 1.0, 1: 0.5}.get(distance, 0.0), values


def _root_cause(item: dict, variant: dict, record: dict) -> tuple[float, dict]:
    diagnosis = (record.get("decisions") or {}).get("diagnosis") or {}
    category, target = diagnosis.get("category"), diagnosis.get("target")
    category_ok = category == variant["expected_category"]
    target_ok = target in variant["targets"]
    if category_ok and not target_ok:
        detail = f"the category {category} is right, but {target or '(no target)'} is not a faulty target"
    elif target_ok and not category_ok:
        detail = f"the target {target} is right, but the category is {category or '(none)'}"
    else:
        detail = ""
    values = {"category": variant["expected_category"], "target": target, "targets": ", ".join(variant["targets"]),
              "given": f"{category or '(no category)'} on {target or '(no target)'}", "detail": detail}
    return 0.5 * category_ok + 0.5 * target_ok, values


def _remediation(item: dict, variant: dict, record: dict) -> tuple[float, dict]:
    events = record.get("timeline") or []
    actions = [event["message"] for event in events if event["kind"] == "action"]
    verified = any(event["kind"] == "recovery_verified" for event in events)
    return (1.0 if verified else 0.0), {"actions": "; ".join(actions) or "no action"}


def _timeline(item: dict, variant: dict, record: dict) -> tuple[float, dict]:
    kinds = {event["kind"] for event in record.get("timeline") or []}
    required = item.get("required", [])
    found = [kind for kind in required if kind in kinds]
    missing = [kind for kind in required if kind not in kinds]
    fraction = len(found) / len(required) if required else 1.0
    return fraction, {"found": ", ".join(found) or "none of the required events",
                      "missing": ", ".join(missing) or "nothing"}


def _status_updates(item: dict, variant: dict, record: dict) -> tuple[float, dict]:
    """Score the status updates that the severity's cadence made due; each earns its share if on time and complete."""
    events = record.get("timeline") or []
    posted = [event for event in events if event["kind"] == "status_update"]
    overdue = [event for event in events if event["kind"] == "update_overdue"]
    late = sum(1 for event in overdue if event.get("data", {}).get("posted"))
    missed = len(overdue) - late
    fields = item.get("fields", [])
    incomplete = sum(1 for event in posted if any(not event.get("data", {}).get(field) for field in fields))
    problems = []
    if not posted:
        problems.append("the incident record has no status update")
    if late:
        problems.append(f"{late} update(s) were posted late")
    if missed:
        problems.append(f"{missed} update(s) that were due were never posted")
    if incomplete:
        problems.append(f"{incomplete} of {len(posted)} update(s) leave one of {', '.join(fields)} empty")

    # Every update that was due counts once: posted (on time or late) or missed.
    due = len(posted) + missed
    good = max(0, len(posted) - late - incomplete)
    fraction = good / due if due else 0.0
    return fraction, {"posted": len(posted), "detail": "; ".join(problems)}


def _learner_communication(submission: dict) -> dict:
    """Return the learner's communication as a record: their update times, flags computed here."""
    from ..incident.communication import replay_communication

    updates = (submission.get("decisions") or {}).get("status_updates") or []
    incident = replay_communication(submission.get("timeline") or [], updates, submission.get("time_scale") or 1.0)
    return incident.to_json()


_SCORERS = {
    "severity": _severity,
    "root_cause": _root_cause,
    "remediation": _remediation,
    "timeline": _timeline,
    "status_updates": _status_updates,
}


class _Values(dict):
    """Placeholder values for a feedback sentence; an unknown placeholder shows as '?'."""

    def __missing__(self, key: str) -> str:
        logger.warning("feedback sentence uses unknown placeholder {%s}", key)
        return "?"

"""Communication during an incident: status updates on the severity's cadence, and response targets.

The severity sets both the response-time target and how often stakeholders hear from the
responders. The lab's time_scale compresses both, as it compresses every other duration.
"""

from __future__ import annotations

import datetime as _dt
import logging
from typing import Any

from .record import SEVERITY_LEVELS, STATUSES, Incident, TimelineEvent

__all__ = ["update_cadence", "response_target", "response_check", "record_update", "flag_overdue",
           "updates_table", "replay_communication"]

logger = logging.getLogger(__name__)


def update_cadence(severity: str | None, time_scale: float = 1.0) -> _dt.timedelta | None:
    """Return the longest time allowed between two status updates at ``severity``, or None without one.

    The cadence equals the severity's response-time target (SEV-1: every 15 min, SEV-4: daily),
    multiplied by the lab's ``time_scale``.
    """
    if severity is None:
        return None
    return SEVERITY_LEVELS[severity].respond_within * time_scale


def response_target(incident: Incident) -> _dt.timedelta | None:
    """Return the incident's response-time target, compressed by its time_scale, or None without a severity."""
    return update_cadence(incident.severity, incident.time_scale)


def response_check(incident: Incident, now: _dt.datetime | None = None) -> dict[str, Any]:
    """Say whether the first human response (the acknowledgement) came within the severity's target.

    Returns a dict with ``target_s``, ``response_s`` (fault injected to acknowledgement, None
    when not acknowledged) and ``met``: True, False, or None while it cannot be known yet
    (no severity, or no acknowledgement and the target has not passed at ``now``).
    """
    target, fault = response_target(incident), incident.first("fault_injected")
    ack = incident.first("acknowledged")
    response = ack.time - fault.time if fault is not None and ack is not None else None
    result = {"target_s": target.total_seconds() if target else None,
              "response_s": response.total_seconds() if response is not None else None, "met": None}
    if target is None or fault is None:
        return result
    if response is not None:
        result["met"] = response <= target
    elif (now or _dt.datetime.now(_dt.timezone.utc)) - fault.time > target:
        result["met"] = False
    return result


def record_update(incident: Incident, update: dict[str, Any], time: _dt.datetime | None = None) -> TimelineEvent:
    """Add a checked status update to the incident: a status_update event and decisions["status_updates"].

    The next update is due at the sooner of the learner's promise (next_update_in_minutes, in
    lab minutes, so also compressed by time_scale) and the severity's cadence. An update that
    comes after its due time is flagged as late. Returns the new status_update event.
    """
    time = time or _dt.datetime.now(_dt.timezone.utc)
    due = _next_due(incident, update.get("next_update_in_minutes"), time)
    status = update.get("status") or incident.status
    entry = {**update, "status": status, "time": _iso(time), "next_update_due": _iso(due) if due else None}
    incident.decisions.setdefault("status_updates", []).append(entry)
    summary = f"[{status}] {update['conditions']}"
    data = {key: value for key, value in entry.items() if key != "time"}
    event = incident.add_event("status_update", "learner", summary, time=time, **data)
    flag_overdue(incident, time)  # after the update, so that it counts as the late reply to its due time
    return event


def flag_overdue(incident: Incident, until: _dt.datetime | None = None) -> list[TimelineEvent]:
    """Add an update_overdue event for each update that was due before ``until`` and not posted.

    Nothing is due before a severity is set, nor once the incident is Resolved. Events are
    added once per due time, at that time, so calling this again adds nothing new. Returns
    the events added.
    """
    until = until or _dt.datetime.now(_dt.timezone.utc)
    resolved = incident.first("status_changed", status="Resolved")
    if resolved is not None:
        until = min(until, resolved.time)
    added, flagged = [], {event.data.get("due") for event in incident.timeline if event.kind == "update_overdue"}
    for due, posted in _due_times(incident, until):
        late = (posted or until) - due
        if late.total_seconds() <= 0 or _iso(due) in flagged:
            continue
        message = (f"status update due at {_clock(due)} UTC was posted {late.total_seconds():.1f} s late"
                   if posted else f"status update due at {_clock(due)} UTC: none posted by {_clock(until)} UTC")
        added.append(incident.add_event("update_overdue", "lab", message, time=due, due=_iso(due),
                                        late_s=round(late.total_seconds(), 3), posted=posted is not None))
        logger.info("incident %s learner=%s: %s", incident.id, incident.learner, message)
    return added


def updates_table(incident: Incident) -> list[dict[str, Any]]:
    """Return the status updates posted, each with whether it was on time: rows for the report."""
    late = {event.data["due"] for event in incident.timeline if event.kind == "update_overdue"}
    rows, due = [], _first_due(incident)
    for update in incident.decisions.get("status_updates", []):
        on_time = due is None or _iso(due) not in late
        rows.append({**update, "on_time": on_time})
        due = _parse(update.get("next_update_due"))
    return rows


def replay_communication(timeline: list[dict], updates: list[dict], time_scale: float = 1.0) -> Incident:
    """Rebuild an incident's communication from an exported timeline and its status updates.

    The times come from the export (the learner's own run), but the overdue flags are computed
    again here, so that flags in the export are never trusted. Events of unknown kinds and
    events without a readable time are left out. Returns an Incident that has the severity
    changes, status changes and status updates, and the overdue events.
    """
    incident = Incident(id="INC-00000000-000", scenario="", title="", time_scale=time_scale)
    for event in timeline:
        when = _event_time(event)
        if when is None:
            continue
        if event.get("kind") == "severity_set" and event.get("data", {}).get("severity") in SEVERITY_LEVELS:
            incident.set_severity(event["data"]["severity"], time=when)
        elif event.get("kind") == "status_changed" and event.get("data", {}).get("status") in STATUSES:
            incident.set_status(event["data"]["status"], time=when)
    last = max((_event_time(event) for event in timeline if _event_time(event)), default=None)
    for update in updates:
        posted = _parse(update.get("time"))
        if posted is None:
            continue
        promised = update.get("next_update_in_minutes")
        fields = {key: update.get(key) for key in ("status", "conditions", "actions", "needs")}
        record_update(incident, {**fields, "next_update_in_minutes": promised}, time=posted)
        last = max(last, posted) if last else posted
    if last is not None:
        flag_overdue(incident, until=last)
    return incident


def _event_time(event: dict) -> _dt.datetime | None:
    try:
        return _parse(event.get("time"))
    except (TypeError, ValueError):
        return None


def _due_times(incident: Incident, until: _dt.datetime) -> list[tuple[_dt.datetime, _dt.datetime | None]]:
    """Return (due time, time of the update that replied to it, or None) for each due time before ``until``."""
    due, pairs = _first_due(incident), []
    for update in incident.decisions.get("status_updates", []):
        posted = _parse(update["time"])
        if due is not None:
            pairs.append((due, posted))
        due = _parse(update.get("next_update_due"))
    if due is not None and due < until:
        pairs.append((due, None))
    return pairs


def _first_due(incident: Incident) -> _dt.datetime | None:
    triaged = incident.first("severity_set")
    if triaged is None:
        return None
    return triaged.time + update_cadence(triaged.data["severity"], incident.time_scale)


def _next_due(incident: Incident, promised_minutes: float | None, time: _dt.datetime) -> _dt.datetime | None:
    cadence = update_cadence(incident.severity, incident.time_scale)
    candidates = [time + cadence] if cadence is not None else []
    if promised_minutes:
        candidates.append(time + _dt.timedelta(minutes=promised_minutes) * incident.time_scale)
    return min(candidates) if candidates else None


def _clock(value: _dt.datetime) -> str:
    """Format a time with milliseconds, because a time-scaled lab moves in sub-seconds."""
    value = value.astimezone(_dt.timezone.utc)
    return f"{value:%H:%M:%S}.{value.microsecond // 1000:03d}"


def _iso(value: _dt.datetime) -> str:
    return value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: str | None) -> _dt.datetime | None:
    """Read an ISO 8601 UTC time with or without fractions of a second ("...Z" or "+00:00")."""
    if not value:
        return None
    parsed = _dt.datetime.fromisoformat(value)
    return parsed.replace(tzinfo=_dt.timezone.utc) if parsed.tzinfo is None else parsed.astimezone(_dt.timezone.utc)

"""Incident report: render an Incident as Markdown with data/templates/incident-report.md.j2.

save_report() writes the report and the JSON record under HOME/incidents/.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
from pathlib import Path
from typing import Any

import jinja2

from .._fileio import write_atomic
from .._resources import data_path
from .record import SEVERITY_LEVELS, Incident, IncidentStore, TimelineEvent

__all__ = ["render_report", "save_report", "format_duration", "NOT_RECORDED"]

logger = logging.getLogger(__name__)

TEMPLATE_NAME = "incident-report.md.j2"
#: Text shown for a decision, time or section that the record does not have.
NOT_RECORDED = "not recorded"
NOT_RESOLVED = "not resolved"
NOT_MEASURED = "not measured"
#: Measured times: the Incident property, its label and the span it measures.
MEASURED_TIMES = (
    ("time_to_detect", "Time to detect", "fault injected to the first failing probe or acknowledgement"),
    ("time_to_acknowledge", "Time to acknowledge", "first failing probe to acknowledgement"),
    (
        "time_to_mitigate",
        "Time to mitigate",
        "fault injected to the event marked mitigated, else to recovery verified",
    ),
    ("time_to_recover", "Time to recover", "fault injected to recovery verified by probes"),
)


def render_report(incident: Incident) -> str:
    """Render the incident report as Markdown and return it.

    Sections: metadata, impact, timeline, the measured times, root cause, resolution
    (the remediation actions of the timeline), action items and lessons learned. A
    decision that the record does not have renders as "not recorded". Raises ConfigError
    when the template is missing.
    """
    return _template().render(**_context(incident))


def save_report(incident: Incident, store: IncidentStore) -> tuple[Path, Path]:
    """Write the Markdown report and the JSON record atomically, side by side.

    Returns (markdown path, JSON path) under the store's incidents folder. Raises
    RecordError for a malformed incident id.
    """
    md_path = write_atomic(store.report_path(incident.id), render_report(incident))
    json_path = store.save(incident)
    logger.info("incident %s report written to %s", incident.id, md_path)
    return md_path, json_path


def format_duration(value: _dt.timedelta | None, missing: str = NOT_MEASURED) -> str:
    """Format a timedelta as "42.5 s", "3 min 07.0 s" or "1 h 02 min 07 s", and None as ``missing``."""
    if value is None:
        return missing
    seconds = value.total_seconds()
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{sign}{seconds:.1f} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{sign}{int(minutes)} min {seconds:04.1f} s"
    hours, minutes = divmod(int(minutes), 60)
    return f"{sign}{hours} h {minutes:02d} min {int(seconds):02d} s"


@functools.lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(data_path("templates", TEMPLATE_NAME).parent),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # the output is Markdown, and _cell() escapes table cells
        keep_trailing_newline=True,
    )
    return environment.get_template(TEMPLATE_NAME)


def _context(incident: Incident) -> dict[str, Any]:
    """Return every value the template uses, already formatted as text."""
    started, resolved = incident.started_at, incident.resolved_at
    decisions = incident.decisions
    return {
        "title": _inline(incident.title) or NOT_RECORDED,
        "id": incident.id,
        "scenario": _inline(incident.scenario) or NOT_RECORDED,
        "learner": _inline(incident.learner) or NOT_RECORDED,
        "severity": _severity(incident.severity),
        "status": incident.status,
        "started": _format_time(started) if started else NOT_RECORDED,
        "resolved": _format_time(resolved) if resolved else NOT_RESOLVED,
        "duration": format_duration(incident.duration, NOT_RESOLVED),
        "impact": [(_label(key), _value(value)) for key, value in incident.impact.items()],
        "timeline": _timeline_rows(incident.timeline),
        "measured": [
            {"name": label, "span": span, "value": format_duration(getattr(incident, name))}
            for name, label, span in MEASURED_TIMES
        ],
        **_communication(incident),
        "root_cause": _text(decisions.get("root_cause")) or NOT_RECORDED,
        "resolution": _resolution(incident.timeline),
        "action_items": [_action_item(item) for item in _as_list(decisions.get("action_items"))],
        "lessons_learned": [_text(item) for item in _as_list(decisions.get("lessons_learned"))],
        "not_recorded": NOT_RECORDED,
    }


def _communication(incident: Incident) -> dict[str, Any]:
    """Return the response-target line, the cadence, the updates table and the overdue lines."""
    from .communication import response_check, update_cadence, updates_table

    check = response_check(incident)
    if check["target_s"] is None:
        response = f"{NOT_MEASURED} (no severity set)"
    else:
        target = format_duration(_dt.timedelta(seconds=check["target_s"]))
        taken = (format_duration(_dt.timedelta(seconds=check["response_s"]))
                 if check["response_s"] is not None else "no acknowledgement")
        verdict = {True: "met", False: "missed", None: "pending"}[check["met"]]
        response = f"{verdict}: fault injected to acknowledgement {taken}, target {target}{_scale(incident)}"
    cadence = update_cadence(incident.severity, incident.time_scale)
    rows = [{"time": _clock(_parse_iso(row["time"]), False), "status": _cell(row.get("status") or ""),
             "conditions": _cell(row.get("conditions") or ""), "actions": _cell(row.get("actions") or ""),
             "needs": _cell(row.get("needs") or ""),
             "due": _clock(_parse_iso(row["next_update_due"]), False) if row.get("next_update_due") else "",
             "on_time": "yes" if row["on_time"] else "**late**"} for row in updates_table(incident)]
    overdue = [f"{_clock(event.time, False)} UTC: {_inline(event.message)}"
               for event in incident.timeline if event.kind == "update_overdue"]
    return {"response": response, "updates": rows, "overdue": overdue,
            "cadence": (f"an update at least every {format_duration(cadence)}{_scale(incident)}"
                        if cadence is not None else f"{NOT_MEASURED} (no severity set)")}


def _scale(incident: Incident) -> str:
    if incident.time_scale == 1:
        return ""
    return f" (lab time, compressed by time_scale {incident.time_scale:g})"


def _parse_iso(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(text).astimezone(_dt.timezone.utc)


def _severity(code: str | None) -> str:
    if code is None:
        return NOT_RECORDED
    level = SEVERITY_LEVELS[code]
    minutes = int(level.respond_within.total_seconds() // 60)
    within = f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"
    return f"{code} ({level.description}, respond within {within})"


def _timeline_rows(timeline: list[TimelineEvent]) -> list[dict[str, str]]:
    with_date = len({event.time.date() for event in timeline}) > 1
    return [
        {
            "time": _clock(event.time, with_date),
            "source": _cell(event.source),
            "event": _cell(f"{event.kind.replace('_', ' ')}: {event.message}"),
        }
        for event in timeline
    ]


def _resolution(timeline: list[TimelineEvent]) -> list[str]:
    """Return one line per remediation action, then the recovery verification if any."""
    with_date = len({event.time.date() for event in timeline}) > 1
    lines = [
        f"{_clock(event.time, with_date)} UTC, {_inline(event.source)}: {_inline(event.message)}"
        for event in timeline
        if event.kind == "action"
    ]
    recovered = next((event for event in timeline if event.kind == "recovery_verified"), None)
    if recovered is not None:
        clock = _clock(recovered.time, with_date)
        lines.append(f"{clock} UTC, recovery verified: {_inline(recovered.message)}")
    return lines


def _action_item(item: Any) -> str:
    """Format "text", or {"type": "prevent", "description": "...", "owner": "..."}, as one line."""
    if not isinstance(item, dict):
        return _text(item)
    text = _text(item.get("description") or item.get("text") or item.get("title")) or NOT_RECORDED
    kind = f"({_inline(item['type'])}) " if item.get("type") else ""
    owner = f" (owner: {_inline(item['owner'])})" if item.get("owner") else ""
    return f"{kind}{text}{owner}"


def _as_list(value: Any) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _text(value: Any) -> str:
    if value is None:
        return ""
    return _inline(value if isinstance(value, str) else json.dumps(value, default=str))


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return _inline(value if isinstance(value, str) else json.dumps(value, default=str))


def _label(key: str) -> str:
    text = str(key).replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _inline(text: Any) -> str:
    """Return text on one line, so that it cannot break a Markdown list item."""
    return " ".join(str(text).split())


def _cell(text: str) -> str:
    return _inline(text).replace("|", "\\|")


def _format_time(value: _dt.datetime) -> str:
    return value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clock(value: _dt.datetime, with_date: bool) -> str:
    """Format a timeline time with milliseconds, because a time-scaled lab moves in sub-seconds."""
    value = value.astimezone(_dt.timezone.utc)
    text = value.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")
    return f"{text}.{value.microsecond // 1000:03d}"

"""Incident records: the timeline of one simulated incident, the times measured from it, and its JSON file.

Records live under HOME/incidents/ as INC-YYYYMMDD-NNN.json.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as _dt
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from .._fileio import read_json, write_json_atomic
from ..config import default_home
from ..errors import RecordError

__all__ = [
    "SCHEMA_VERSION",
    "EVENT_KINDS",
    "STATUSES",
    "SeverityLevel",
    "SEVERITY_LEVELS",
    "TimelineEvent",
    "Incident",
    "IncidentStore",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: Timeline event kinds. "action" is a remediation call through the lab, "probe_failed" the
#: first failing probe, and "recovery_verified" the probes' verdict that the system recovered.
EVENT_KINDS = (
    "fault_injected",
    "fault_reverted",
    "probe_failed",
    "acknowledged",
    "severity_set",
    "status_changed",
    "diagnosis",
    "action",
    "status_update",
    "update_overdue",
    "recovery_verified",
    "note",
)
#: Status page statuses, in the order an incident normally moves through them.
STATUSES = ("Investigating", "Identified", "Monitoring", "Resolved")
INCIDENTS_FOLDER = "incidents"
_ID_PATTERN = re.compile(r"^INC-(\d{8})-(\d{3,})$")


@dataclasses.dataclass(frozen=True)
class SeverityLevel:
    """One row of the severity table: a lower number is worse."""

    code: str
    description: str
    respond_within: _dt.timedelta


#: Severity definitions. When unsure, pick the higher severity and revisit it as evidence changes.
SEVERITY_LEVELS = {
    "SEV-1": SeverityLevel("SEV-1", "complete outage", _dt.timedelta(minutes=15)),
    "SEV-2": SeverityLevel("SEV-2", "major degradation", _dt.timedelta(minutes=30)),
    "SEV-3": SeverityLevel("SEV-3", "limited impact", _dt.timedelta(hours=2)),
    "SEV-4": SeverityLevel("SEV-4", "minimal impact", _dt.timedelta(hours=24)),
}


@dataclasses.dataclass(frozen=True)
class TimelineEvent:
    """One timeline entry. Events sort by (time, seq), so seq orders events with equal times."""

    time: _dt.datetime
    seq: int
    kind: str
    source: str
    message: str
    data: dict = dataclasses.field(default_factory=dict)

    @property
    def sort_key(self) -> tuple[_dt.datetime, int]:
        return (self.time, self.seq)

    def to_json(self) -> dict:
        """Return the event as a JSON-ready dict."""
        return {
            "time": _format_time(self.time),
            "seq": self.seq,
            "kind": self.kind,
            "source": self.source,
            "message": self.message,
            "data": self.data,
        }


@dataclasses.dataclass
class Incident:
    """One incident: metadata, the learner's decisions and the timeline that the lab records.

    ``severity`` is a key of SEVERITY_LEVELS or None, ``status`` one of STATUSES,
    ``impact`` contains numbers (blocks missed, requests failed) and ``decisions`` the
    learner's decisions (root_cause, action_items, lessons_learned). ``time_scale`` is the
    lab's, which compresses the response targets and the update cadence as it compresses the
    chain's timeouts. Raises RecordError for an unknown severity or status, or a naive created_at.
    """

    id: str
    scenario: str
    title: str
    learner: str = ""
    seed: int | None = None
    severity: str | None = None
    status: str = STATUSES[0]
    impact: dict = dataclasses.field(default_factory=dict)
    decisions: dict = dataclasses.field(default_factory=dict)
    timeline: list[TimelineEvent] = dataclasses.field(default_factory=list)
    created_at: _dt.datetime = dataclasses.field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc))
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_severity(self.severity)
        _check_status(self.status)
        self.created_at = _utc(self.created_at, "created_at")
        self.timeline = sorted(self.timeline, key=lambda event: event.sort_key)

    def add_event(
        self, kind: str, source: str, message: str, time: _dt.datetime | None = None, **data: Any
    ) -> TimelineEvent:
        """Add an event to the timeline and return it.

        Takes a kind from EVENT_KINDS, the source (learner, lab, probe, a target name), a
        one-line message, an aware time (now when None) and JSON-ready ``data``. Raises
        RecordError for an unknown kind, a naive time or data that JSON cannot encode.
        """
        if kind not in EVENT_KINDS:
            raise RecordError(f"unknown timeline event kind {kind!r}. Use one of: {', '.join(EVENT_KINDS)}.")
        when = _dt.datetime.now(_dt.timezone.utc) if time is None else _utc(time, "time")
        try:
            json.dumps(data)
        except (TypeError, ValueError) as exc:
            raise RecordError(
                f"data of the {kind} event cannot be stored as JSON ({exc}). "
                "Pass strings, numbers, booleans, lists and dicts."
            ) from exc

        seq = max((event.seq for event in self.timeline), default=0) + 1
        event = TimelineEvent(when, seq, kind, source, message, dict(data))
        bisect.insort(self.timeline, event, key=lambda item: item.sort_key)
        logger.debug("incident %s: %s event seq %d from %s: %s", self.id, kind, seq, source, message)
        return event

    def set_severity(
        self, severity: str, source: str = "learner", time: _dt.datetime | None = None
    ) -> TimelineEvent:
        """Set the severity and record a severity_set event. Raises RecordError for an unknown level."""
        _check_severity(severity)
        previous, self.severity = self.severity, severity
        message = severity if previous is None else f"{severity} (was {previous})"
        return self.add_event("severity_set", source, message, time, severity=severity, previous=previous)

    def set_status(
        self, status: str, source: str = "learner", time: _dt.datetime | None = None
    ) -> TimelineEvent:
        """Set the status and record a status_changed event. Raises RecordError for an unknown status."""
        _check_status(status)
        previous, self.status = self.status, status
        message = f"{status} (was {previous})" if previous != status else status
        return self.add_event("status_changed", source, message, time, status=status, previous=previous)

    def first(self, kind: str, after: _dt.datetime | None = None, **match: Any) -> TimelineEvent | None:
        """Return the earliest event of ``kind`` at or after ``after`` whose data has the ``match`` values."""
        for event in self.timeline:
            if event.kind != kind or (after is not None and event.time < after):
                continue
            if all(event.data.get(key) == value for key, value in match.items()):
                return event
        return None

    @property
    def started_at(self) -> _dt.datetime | None:
        """Impact start: the first fault_injected event, else the first event of the timeline."""
        fault = self.first("fault_injected")
        if fault is not None:
            return fault.time
        return self.timeline[0].time if self.timeline else None

    @property
    def resolved_at(self) -> _dt.datetime | None:
        """The first change of status to Resolved, else the first recovery_verified event, after the start."""
        start = self.started_at
        if start is None:
            return None
        resolved = self.first("status_changed", start, status="Resolved")
        event = resolved or self.first("recovery_verified", start)
        return event.time if event else None

    @property
    def duration(self) -> _dt.timedelta | None:
        """Time from started_at to resolved_at, or None while unresolved."""
        start, end = self.started_at, self.resolved_at
        return end - start if start is not None and end is not None else None

    @property
    def time_to_detect(self) -> _dt.timedelta | None:
        """Fault injected to the first failing probe or acknowledgement, whichever came first."""
        fault = self.first("fault_injected")
        if fault is None:
            return None
        alert, ack = self.first("probe_failed", fault.time), self.first("acknowledged", fault.time)
        detected = [event.time for event in (alert, ack) if event is not None]
        return min(detected) - fault.time if detected else None

    @property
    def time_to_acknowledge(self) -> _dt.timedelta | None:
        """First failing probe (the alert) to the first acknowledgement.

        Zero when the learner acknowledged before any probe failed.
        """
        alert, ack = self.first("probe_failed"), self.first("acknowledged")
        if alert is None or ack is None:
            return None
        return max(ack.time - alert.time, _dt.timedelta(0))

    @property
    def time_to_mitigate(self) -> _dt.timedelta | None:
        """Fault injected to the first event with data mitigated=True, else to recovery_verified."""
        fault = self.first("fault_injected")
        if fault is None:
            return None
        marked = [event for event in self.timeline if event.data.get("mitigated") is True]
        mitigated = next((event for event in marked if event.time >= fault.time), None)
        end = mitigated or self.first("recovery_verified", fault.time)
        return end.time - fault.time if end else None

    @property
    def time_to_recover(self) -> _dt.timedelta | None:
        """Fault injected to the first recovery_verified event (recovery as the probes saw it)."""
        fault = self.first("fault_injected")
        if fault is None:
            return None
        recovered = self.first("recovery_verified", fault.time)
        return recovered.time - fault.time if recovered else None

    def measured_times(self) -> dict[str, _dt.timedelta | None]:
        """Return time_to_detect, time_to_acknowledge, time_to_mitigate and time_to_recover by name."""
        names = ("time_to_detect", "time_to_acknowledge", "time_to_mitigate", "time_to_recover")
        return {name: getattr(self, name) for name in names}

    def to_json(self) -> dict:
        """Return the record as a JSON-ready dict with "schema_version": 1.

        The "measured_s" entry repeats the measured times in seconds for readers of the
        file. from_json() ignores it, because the times follow from the timeline.
        """
        measured = {
            name: (value.total_seconds() if value is not None else None)
            for name, value in self.measured_times().items()
        }
        return {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "scenario": self.scenario,
            "title": self.title,
            "learner": self.learner,
            "seed": self.seed,
            "severity": self.severity,
            "status": self.status,
            "impact": self.impact,
            "decisions": self.decisions,
            "created_at": _format_time(self.created_at),
            "time_scale": self.time_scale,
            "timeline": [event.to_json() for event in self.timeline],
            "measured_s": measured,
        }

    @classmethod
    def from_json(cls, data: dict | str, source: str = "incident record") -> "Incident":
        """Build an Incident from to_json() output (a dict or its JSON text).

        ``source`` names the file in error messages. Raises RecordError naming the source
        and the field when the data is not a schema version 1 record.
        """
        reader = _RecordReader(source)
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise reader.error("", f"is not valid JSON ({exc})") from exc
        reader.check_version(data)
        severity = reader.get(data, "severity", (str, type(None)))
        if severity is not None and severity not in SEVERITY_LEVELS:
            levels = ", ".join(SEVERITY_LEVELS)
            raise reader.error("severity", f"is {severity!r}, expected one of {levels} or null")
        status = reader.get(data, "status", str)
        if status not in STATUSES:
            raise reader.error("status", f"is {status!r}, expected one of {', '.join(STATUSES)}")
        events = reader.get(data, "timeline", list)

        return cls(
            id=reader.get(data, "id", str),
            scenario=reader.get(data, "scenario", str),
            title=reader.get(data, "title", str),
            learner=reader.get(data, "learner", str),
            seed=reader.get(data, "seed", (int, type(None))),
            severity=severity,
            status=status,
            impact=reader.get(data, "impact", dict),
            decisions=reader.get(data, "decisions", dict),
            timeline=[reader.event(item, f"timeline[{index}]") for index, item in enumerate(events)],
            created_at=reader.time(data, "created_at"),
            time_scale=reader.get(data, "time_scale", (int, float)) if "time_scale" in data else 1.0,
        )


class IncidentStore:
    """Incident records under HOME/incidents/, one INC-YYYYMMDD-NNN.json per incident.

    Takes the lab home (default_home() when None).
    """

    def __init__(self, home: str | os.PathLike | None = None):
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.directory = self.home / INCIDENTS_FOLDER

    def __repr__(self) -> str:
        return f"IncidentStore({str(self.home)!r})"

    def record_path(self, incident_id: str) -> Path:
        """Return the path of the record's JSON file. Raises RecordError for a malformed id."""
        return self.directory / f"{_check_id(incident_id)}.json"

    def report_path(self, incident_id: str) -> Path:
        """Return the path of the record's Markdown report. Raises RecordError for a malformed id."""
        return self.directory / f"{_check_id(incident_id)}.md"

    def new_id(self, now: _dt.datetime | None = None) -> str:
        """Allocate the next free id INC-YYYYMMDD-NNN for the UTC date of ``now``.

        The id is reserved with a hidden file created with O_EXCL, so two processes that
        allocate at once get different ids. Raises RecordError for a naive ``now``.
        """
        date = (_dt.datetime.now(_dt.timezone.utc) if now is None else _utc(now, "now")).strftime("%Y%m%d")
        self.directory.mkdir(parents=True, exist_ok=True)
        number = self._highest_number(date) + 1
        while True:
            candidate = f"INC-{date}-{number:03d}"
            try:
                reservation = self.directory / f".{candidate}.reserved"
                fd = os.open(reservation, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                number += 1
                continue
            os.close(fd)
            logger.debug("reserved incident id %s in %s", candidate, self.directory)
            return candidate

    def save(self, incident: Incident) -> Path:
        """Write the record atomically and return its path. Raises RecordError for a malformed id."""
        path = write_json_atomic(self.record_path(incident.id), incident.to_json())
        logger.info("incident %s saved to %s (%d events)", incident.id, path, len(incident.timeline))
        return path

    def load(self, incident_id: str) -> Incident:
        """Read one record. Raises RecordError naming the path when the file is missing or corrupt."""
        path = self.record_path(incident_id)
        try:
            data = read_json(path)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RecordError(
                f"incident record {path} is not valid JSON ({exc}). Fix the file by hand, or move it "
                f"out of {self.directory} so that the lab skips it."
            ) from exc
        except OSError as exc:
            raise RecordError(
                f"incident record {path} cannot be read ({exc}). Check the file's permissions."
            ) from exc
        if data is None:
            raise RecordError(
                f"no incident record {incident_id} in {self.directory}. "
                "IncidentStore.list() returns the saved ones."
            )
        return Incident.from_json(data, source=str(path))

    def list(self) -> list[Incident]:
        """Return every readable record, sorted by id. A corrupt record is skipped with a warning."""
        incidents = []
        for path in sorted(self.directory.glob("INC-*.json")):
            if not _ID_PATTERN.match(path.stem):
                continue
            try:
                incidents.append(self.load(path.stem))
            except RecordError as exc:
                logger.warning("skipping incident record %s: %s", path, exc)
        return incidents

    def _highest_number(self, date: str) -> int:
        numbers = [0]
        for path in self.directory.glob(f"*INC-{date}-*"):
            match = _ID_PATTERN.match(path.name.lstrip(".").split(".")[0])
            if match:
                numbers.append(int(match.group(2)))
        return max(numbers)


class _RecordReader:
    """Typed field access for from_json(), raising RecordError that names the source and field."""

    def __init__(self, source: str):
        self.source = source

    def error(self, field: str, problem: str) -> RecordError:
        where = f"field {field!r} " if field else ""
        return RecordError(
            f"{self.source}: {where}{problem}. Fix the record by hand, or move the file aside "
            "so that the lab skips it."
        )

    def check_version(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise self.error("", f"is {type(data).__name__}, expected a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise self.error("schema_version", f"is {version!r}, expected {SCHEMA_VERSION}")

    def get(self, data: dict, key: str, kinds: type | tuple, prefix: str = "") -> Any:
        field = f"{prefix}.{key}" if prefix else key
        if key not in data:
            raise self.error(field, "is missing")
        value = data[key]
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        # bool is a subclass of int, so true and false must not pass as an integer.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise self.error(field, f"is {value!r}, expected {_kind_names(kinds)}")
        return value

    def time(self, data: dict, key: str, prefix: str = "") -> _dt.datetime:
        text = self.get(data, key, str, prefix)
        try:
            parsed = _dt.datetime.fromisoformat(text)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            field = f"{prefix}.{key}" if prefix else key
            raise self.error(field, f"is {text!r}, expected an ISO 8601 UTC time")
        return parsed.astimezone(_dt.timezone.utc)

    def event(self, item: Any, field: str) -> TimelineEvent:
        if not isinstance(item, dict):
            raise self.error(field, f"is {item!r}, expected an object")
        kind = self.get(item, "kind", str, field)
        if kind not in EVENT_KINDS:
            raise self.error(f"{field}.kind", f"is {kind!r}, expected one of {', '.join(EVENT_KINDS)}")
        return TimelineEvent(
            time=self.time(item, "time", field),
            seq=self.get(item, "seq", int, field),
            kind=kind,
            source=self.get(item, "source", str, field),
            message=self.get(item, "message", str, field),
            data=self.get(item, "data", dict, field),
        )


def _kind_names(kinds: type | tuple) -> str:
    names = {str: "a string", int: "an integer", dict: "an object", list: "a list", type(None): "null"}
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(names.get(kind, kind.__name__) for kind in kinds)


def _check_severity(severity: str | None) -> None:
    if severity is not None and severity not in SEVERITY_LEVELS:
        levels = ", ".join(SEVERITY_LEVELS)
        raise RecordError(f"severity {severity!r} is unknown. Use one of {levels}, or None.")


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise RecordError(f"status {status!r} is unknown. Use one of {', '.join(STATUSES)}.")


def _check_id(incident_id: str) -> str:
    if not isinstance(incident_id, str) or not _ID_PATTERN.match(incident_id):
        raise RecordError(
            f"incident id {incident_id!r} is malformed. Ids look like INC-20240501-001, "
            "and IncidentStore.new_id() allocates one."
        )
    return incident_id


def _utc(value: _dt.datetime, name: str) -> _dt.datetime:
    if not isinstance(value, _dt.datetime) or value.tzinfo is None:
        raise RecordError(
            f"{name}={value!r} is not an aware datetime. Pass one such as datetime.now(timezone.utc)."
        )
    return value.astimezone(_dt.timezone.utc)


def _format_time(value: _dt.datetime) -> str:
    return value.astimezone(_dt.timezone.utc).isoformat().replace("+00:00", "Z")

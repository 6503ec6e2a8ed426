"""Incident records, their timeline and measured times, and the Markdown incident report."""

from .record import (
    EVENT_KINDS,
    SCHEMA_VERSION,
    SEVERITY_LEVELS,
    STATUSES,
    Incident,
    IncidentStore,
    SeverityLevel,
    TimelineEvent,
)
from .report import render_report, save_report

__all__ = [
    "EVENT_KINDS",
    "SCHEMA_VERSION",
    "SEVERITY_LEVELS",
    "STATUSES",
    "Incident",
    "IncidentStore",
    "SeverityLevel",
    "TimelineEvent",
    "render_report",
    "save_report",
]

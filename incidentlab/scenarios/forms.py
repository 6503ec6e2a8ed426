"""The decision forms of a simulation: triage, status, status update, diagnosis and postmortem.

Each form is built from the simulation's own lists (its services, the lab's targets) and
records through the same Simulation method that a batch run calls with the answers file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..incident.record import SEVERITY_LEVELS, STATUSES
from ..incident.widgets import DecisionForm, Field, parse_action_items
from .answers import ROOT_CAUSE_CATEGORIES

if TYPE_CHECKING:
    from .base import Simulation

__all__ = ["FORM_KINDS", "build_form"]

#: Form kind -> the JSON schema kind its values follow.
FORM_KINDS = {"triage": "triage", "status": "status_change", "update": "status_update", "diagnosis": "diagnosis",
              "postmortem": "postmortem"}
_WIDE = "90%"


def build_form(simulation: "Simulation", kind: str) -> DecisionForm:
    """Return the form of ``kind`` for ``simulation``; raises ValueError for an unknown kind."""
    builders = {"triage": _triage, "status": _status, "update": _update, "diagnosis": _diagnosis,
                "postmortem": _postmortem}
    if kind not in builders:
        raise ValueError(f"unknown form {kind!r}; use one of {', '.join(builders)}")
    return builders[kind](simulation)


def _triage(sim: "Simulation") -> DecisionForm:
    import ipywidgets as w

    severities = [(f"{code}: {level.description}, respond within {_within(level)}", code)
                  for code, level in SEVERITY_LEVELS.items()]
    fields = [
        Field("severity", w.Dropdown(options=severities, value=None, description="Severity", style=_style())),
        Field("affected_services", w.SelectMultiple(options=list(sim.services), description="Affected",
                                                    rows=min(6, len(sim.services) or 1), style=_style()),
              read=lambda value: list(value) or None),
        Field("user_impact", _text_area("User impact", "What do users see? Which requests fail?")),
        Field("failure_rate", w.FloatText(value=0.0, description="Failure rate", style=_style(),
                                          tooltip="fraction of requests failing, 0 to 1")),
    ]
    return DecisionForm("triage", "Triage: how bad is it, and for whom?", fields,
                        lambda d: sim.triage(**d), learner=sim.learner)


def _status(sim: "Simulation") -> DecisionForm:
    import ipywidgets as w

    fields = [Field("status", w.Dropdown(options=list(STATUSES), value=None, description="Status",
                                         style=_style()))]
    return DecisionForm("status_change", "Status page", fields, lambda d: sim.set_status(d.get("status")),
                        button="Post status", learner=sim.learner)


def _update(sim: "Simulation") -> DecisionForm:
    import ipywidgets as w

    current = sim.incident.status if sim.incident is not None else STATUSES[0]
    fields = [
        Field("status", w.Dropdown(options=list(STATUSES), value=current, description="Status", style=_style())),
        Field("conditions", _text_area("Conditions", "What users see right now")),
        Field("actions", _text_area("Actions", "What the responders are doing")),
        Field("needs", _text_area("Needs", "Help or decisions needed (optional)")),
        Field("next_update_in_minutes", w.FloatText(value=0.0, description="Next in (min)", style=_style(),
                                                    tooltip="0 follows the severity's cadence"),
              read=lambda value: None if value == 0 else value),
    ]
    return DecisionForm("status_update", "Status update for stakeholders", fields,
                        lambda d: sim.post_update(**d), button="Post update", learner=sim.learner)


def _diagnosis(sim: "Simulation") -> DecisionForm:
    import ipywidgets as w

    targets = [service["name"] for service in sim.lab.status()["services"]]
    fields = [
        Field("category", w.Dropdown(options=list(ROOT_CAUSE_CATEGORIES), value=None, description="Category",
                                     style=_style())),
        Field("target", w.Dropdown(options=targets, value=None, description="Target", style=_style())),
        Field("evidence", _text_area("Evidence", "What you saw that shows it (states, logs, metrics)")),
    ]
    return DecisionForm("diagnosis", "Diagnosis: what broke, where, and how do you know?", fields,
                        lambda d: sim.diagnose(**d), learner=sim.learner)


def _postmortem(sim: "Simulation") -> DecisionForm:
    fields = [
        Field("root_cause", _text_area("Root cause", "The cause, not the symptom")),
        Field("resolution", _text_area("Resolution", "What restored the service")),
        Field("action_items", _text_area("Action items", "One per line: prevent: ..., mitigate: ..., process: ..."),
              read=parse_action_items),
        Field("lessons_learned", _text_area("Lessons", "What went well, what did not")),
    ]
    return DecisionForm("postmortem", "Postmortem notes", fields, lambda d: sim.postmortem(**d),
                        learner=sim.learner)


def _text_area(label: str, placeholder: str):
    import ipywidgets as w

    return w.Textarea(description=label, placeholder=placeholder, style=_style(),
                      layout=w.Layout(width=_WIDE, height="4em"))


def _style() -> dict:
    return {"description_width": "110px"}


def _within(level) -> str:
    minutes = int(level.respond_within.total_seconds() // 60)
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"

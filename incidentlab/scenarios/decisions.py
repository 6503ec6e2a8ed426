"""The learner's decisions in a running simulation: acknowledgement, triage, status, updates, diagnosis.

Each method records one decision in the incident's timeline, taking the values it is not given
from the answers file in batch mode; form() offers the same decisions as ipywidgets forms.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .answers import ROOT_CAUSE_CATEGORIES

if TYPE_CHECKING:
    import pandas as pd

    from ..incident.record import Incident

__all__ = ["LearnerDecisions"]


class LearnerDecisions:
    """The decision methods of Simulation; they need its incident, answers, mode, services and lock."""

    incident: "Incident | None"
    answers: dict
    mode: str
    learner: str
    services: tuple[str, ...]
    _lock: threading.Lock

    def acknowledge(self) -> None:
        """Record that the learner has seen the incident (the human acknowledgement)."""
        self._require_incident()
        if self.mode == "batch" and not self.answers.get("acknowledge", True):
            return
        self._event("acknowledged", "learner", f"by {self.learner}")

    def triage(self, severity: str | None = None, affected_services: list[str] | None = None,
               user_impact: str | None = None, failure_rate: float | None = None) -> dict:
        """Record the triage decision; values left None come from the answers file.

        Returns the decision. Raises AnswerFileError naming the field for a value that breaks
        the triage schema (a severity outside SEV-1..SEV-4, a failure rate outside 0..1) or an
        affected service the scenario does not have.
        """
        from ..incident.schemas import check

        self._require_incident()
        given = {"severity": severity, "affected_services": affected_services, "user_impact": user_impact,
                 "failure_rate": failure_rate}
        from_file = self.answers.get("triage", {})
        decision = {key: value if value is not None else from_file.get(key) for key, value in given.items()}
        if decision["severity"] is None:
            return {"recorded": False, "hint": "pass severity='SEV-1'..'SEV-4' and the other fields"}
        decision["affected_services"] = list(decision["affected_services"] or [])
        check("triage", {k: v for k, v in decision.items() if v is not None}, "triage")
        unknown = [s for s in decision["affected_services"] if s not in self.services]
        if unknown:
            from ..errors import AnswerFileError

            raise AnswerFileError("triage", f"triage: field 'affected_services' has the invalid value {unknown}; "
                                  f"choose from {', '.join(self.services)}", "affected_services")
        with self._lock:
            self.incident.set_severity(decision["severity"])
            self.incident.decisions["triage"] = decision
        self.save()
        return decision

    def post_update(self, conditions: str | None = None, actions: str | None = None, needs: str | None = None,
                    next_update_in_minutes: float | None = None, status: str | None = None) -> dict | None:
        """Post a status update for stakeholders: what users see, what is being done, what is needed.

        With no arguments in batch mode, posts the answers file's next update (None when none
        is left). The next update is due within the severity's cadence (lab minutes, compressed
        by time_scale) or sooner if promised; late updates are flagged in the timeline.
        Raises AnswerFileError naming the field for a value that breaks the schema.
        """
        from ..incident.communication import record_update
        from ..incident.schemas import check

        self._require_incident()
        update = {"status": status, "conditions": conditions, "actions": actions, "needs": needs,
                  "next_update_in_minutes": next_update_in_minutes}
        if all(value is None for value in update.values()):
            planned = self.answers.get("status_updates", [])
            posted = len(self.incident.decisions.get("status_updates", []))
            if posted >= len(planned):
                return None
            update = dict(planned[posted])
        update = {key: value for key, value in update.items() if value is not None}
        check("status_update", update, "status update")
        with self._lock:
            event = record_update(self.incident, update)
        self.save()
        return event.data

    def communication(self) -> "pd.DataFrame":
        """Return the status updates posted so far, with when each next one is due and whether it was on time."""
        import pandas as pd

        from ..incident.communication import flag_overdue, updates_table

        self._require_incident()
        with self._lock:
            flag_overdue(self.incident)
        columns = ["time", "status", "conditions", "actions", "needs", "next_update_due", "on_time"]
        return pd.DataFrame(updates_table(self.incident), columns=columns)

    def set_status(self, status: str | None = None) -> str | None:
        """Move the status page to ``status``; in batch mode the next status from the answers file."""
        self._require_incident()
        if status is None:
            planned = list(self.answers.get("status", []))
            done = sum(1 for e in self.incident.timeline if e.kind == "status_changed")
            status = planned[done] if done < len(planned) else None
        if status is None:
            return None
        if status == self.incident.status and self.incident.first("status_changed") is not None:
            return status  # already posted: an unchanged status is no new event
        from ..incident.communication import flag_overdue

        with self._lock:
            flag_overdue(self.incident)
            self.incident.set_status(status)
        self.save()
        return status

    def form(self, kind: str):
        """Return the decision form ``kind`` (triage, status, update, diagnosis, postmortem) to fill in.

        In interactive mode this is an ipywidgets form whose submit button records the decision.
        In batch mode no widget is built: the decision comes from the answers file, is recorded,
        and is returned. Raises ConfigError for an unknown kind.
        """
        from .forms import FORM_KINDS

        if kind not in FORM_KINDS:
            raise ConfigError(f"form {kind!r} is unknown; use one of {', '.join(FORM_KINDS)}")
        self._require_incident()
        if self.mode == "batch":
            replay = {"triage": self.triage, "status": self.set_status, "update": self.post_update,
                      "diagnosis": self.diagnose, "postmortem": self.postmortem}
            return replay[kind]()
        from .forms import build_form

        return build_form(self, kind)

    def postmortem(self, root_cause: str | None = None, resolution: str | None = None,
                   action_items: list[dict] | None = None, lessons_learned: str | None = None) -> dict:
        """Record the postmortem notes (answers file for None); the report and the debrief use them.

        Raises AnswerFileError naming the field for an action item without a type (prevent,
        mitigate or process) or text.
        """
        from ..incident.schemas import check

        self._require_incident()
        given = {"root_cause": root_cause, "resolution": resolution, "action_items": action_items,
                 "lessons_learned": lessons_learned}
        notes = {key: value if value is not None else self.answers.get(key) for key, value in given.items()}
        notes = {key: value for key, value in notes.items() if value is not None}
        check("postmortem", notes, "postmortem")
        with self._lock:
            self.incident.decisions.update(notes)
        self.save()
        return notes

    def resolve(self) -> str:
        """Set the status to Resolved, but only once the probes have verified the recovery."""
        self._require_incident()
        if self.incident.first("recovery_verified") is None:
            return "not resolved: the probes have not verified a recovery yet; fix the cause and run verify() again"
        self.set_status("Resolved")
        return "Resolved"

    def diagnose(self, category: str | None = None, target: str | None = None, evidence: str | None = None) -> dict:
        """Record the diagnosis: root-cause category, target and evidence (answers file for None).

        Raises AnswerFileError naming the field for a category outside ROOT_CAUSE_CATEGORIES.
        """
        from ..incident.schemas import check

        self._require_incident()
        from_file = self.answers.get("diagnosis", {})
        decision = {"category": category or from_file.get("category"), "target": target or from_file.get("target"),
                    "evidence": evidence or from_file.get("evidence")}
        if decision["category"] is None:
            return {"recorded": False, "hint": f"pass category= one of {list(ROOT_CAUSE_CATEGORIES)}"}
        check("diagnosis", {k: v for k, v in decision.items() if v is not None}, "diagnosis")
        with self._lock:
            self.incident.decisions["diagnosis"] = decision
            self.incident.add_event("diagnosis", "learner", f"{decision['category']} on {decision['target']}",
                                    **decision)
        self.save()
        return decision

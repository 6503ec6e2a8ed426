"""The decision file: what a learner decided and did in one incident, exported for grading.

export_decisions() builds it from an incident record, save_decisions() writes it under
HOME/submissions/, load_decisions() checks one against its schema, and to_answers() turns it
into an answers file that a batch run replays.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from pathlib import Path
from typing import Any

from .._fileio import write_json_atomic
from ..errors import AnswerFileError
from .record import Incident, IncidentStore
from .schemas import check

__all__ = ["DECISIONS_SCHEMA", "export_decisions", "save_decisions", "load_decisions", "to_answers",
           "decisions_filename"]

logger = logging.getLogger(__name__)

DECISIONS_SCHEMA = "incidentlab/decisions"
DECISIONS_VERSION = 1
SUBMISSIONS_FOLDER = "submissions"
#: Decisions copied as they are from the record; the rest come from its timeline.
_RECORDED = ("triage", "diagnosis", "root_cause", "resolution", "action_items", "lessons_learned")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def export_decisions(incident: Incident) -> dict:
    """Return the decision file of ``incident`` as a JSON-ready dict (see data/schemas)."""
    decisions: dict[str, Any] = {key: incident.decisions.get(key) for key in _RECORDED}
    decisions["acknowledge"] = incident.first("acknowledged") is not None
    decisions["status"] = [event.data["status"] for event in incident.timeline if event.kind == "status_changed"]
    decisions["status_updates"] = list(incident.decisions.get("status_updates", []))
    actions = [
        {"action": event.data.get("action"), "target": event.data.get("target"),
         "options": dict(event.data.get("options") or {}), "time": event.to_json()["time"]}
        for event in incident.timeline if event.kind == "action"
    ]
    return {
        "schema": DECISIONS_SCHEMA,
        "schema_version": DECISIONS_VERSION,
        "learner": incident.learner or "learner",
        "scenario": incident.scenario,
        "seed": incident.seed if incident.seed is not None else 0,
        "time_scale": incident.time_scale,
        "incident_id": incident.id,
        "exported_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "decisions": decisions,
        "actions": actions,
        "timeline": [event.to_json() for event in incident.timeline],
    }


def decisions_filename(learner: str, scenario: str, seed: int) -> str:
    """Return a safe file name like "ada-node-down-seed-7.json" (no path separators, no leading dot)."""
    parts = [_UNSAFE.sub("_", str(part)).strip("._") or "unnamed" for part in (learner, scenario)]
    return f"{parts[0]}-{parts[1]}-seed-{int(seed)}.json"


def save_decisions(incident: Incident, store: IncidentStore) -> Path:
    """Write the decision file of ``incident`` under HOME/submissions/ atomically; return its path."""
    data = export_decisions(incident)
    path = store.home / SUBMISSIONS_FOLDER / decisions_filename(data["learner"], data["scenario"], data["seed"])
    write_json_atomic(path, data)
    logger.info("decision file of incident %s learner=%s written to %s", incident.id, data["learner"], path)
    return path


def load_decisions(path: str | Path) -> dict:
    """Read a decision file and check it against its schema; return its content.

    Raises AnswerFileError naming the file, and the field, value and rule when it breaks the
    schema (or reports that the file is missing or not JSON).
    """
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnswerFileError(str(path), f"decision file {path} not found; export it with the report cell "
                                         "(it is saved under the lab home's submissions/)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AnswerFileError(str(path), f"cannot read decision file {path}: {exc}") from exc
    except ValueError as exc:
        raise AnswerFileError(str(path), f"decision file {path} is not valid JSON: {exc}; export it again "
                                         "with the report cell") from exc
    check("decisions_file", data, str(path))
    return data


def to_answers(decisions: dict) -> dict:
    """Return the answers file (a dict) that replays a checked decision file in batch mode."""
    recorded = decisions["decisions"]
    answers: dict[str, Any] = {"learner": decisions["learner"], "acknowledge": bool(recorded.get("acknowledge"))}
    for key in ("triage", "diagnosis", "root_cause", "resolution", "action_items", "lessons_learned"):
        if recorded.get(key) is not None:
            answers[key] = recorded[key]
    if recorded.get("status"):
        answers["status"] = list(recorded["status"])
    updates = [{key: value for key, value in update.items() if key not in ("time", "next_update_due")}
               for update in recorded.get("status_updates") or []]
    if updates:
        answers["status_updates"] = updates
    answers["actions"] = [{"action": action["action"], "target": action["target"], **action["options"]}
                          for action in decisions["actions"]]
    return answers

"""Answers files: a learner's decisions as data, read in batch mode instead of widgets.

An answers file is JSON or YAML with the keys below; every key is optional, and a key that is
present must have the right shape. Errors name the file, the field, the value and the rule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import AnswerFileError
from ..incident.record import SEVERITY_LEVELS, STATUSES

__all__ = ["load_answers", "ROOT_CAUSE_CATEGORIES", "ACTION_ITEM_TYPES", "REMEDIATION_ACTIONS"]

ROOT_CAUSE_CATEGORIES = (
    "container or orchestration",
    "application logic",
    "configuration",
    "resource constraint",
    "network",
    "data pipeline",
)
ACTION_ITEM_TYPES = ("prevent", "mitigate", "process")
REMEDIATION_ACTIONS = ("start", "stop", "restart", "pause", "unpause", "kill", "halt")
#: Actions that act on the whole lab rather than one target.
TARGETLESS_ACTIONS = ("halt",)
_KNOWN_KEYS = ("learner", "acknowledge", "triage", "status", "diagnosis", "actions", "root_cause",
               "resolution", "action_items", "lessons_learned")


def load_answers(path: str | Path) -> dict[str, Any]:
    """Read and check an answers file; return its content as a dict.

    Raises AnswerFileError when the file is missing, is not JSON or YAML, or a field breaks
    its rule (the error names the field and the value).
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AnswerFileError(str(path), f"answers file {path} not found; pass answers_path= the file your "
                                         "instructor gave you, or run in mode='interactive'") from None
    except OSError as exc:
        raise AnswerFileError(str(path), f"cannot read answers file {path}: {exc}") from exc
    data = _parse(path, text)
    _check(path, data)
    return data


def _parse(path: Path, text: str) -> dict:
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except ValueError as exc:  # json.JSONDecodeError and yaml.YAMLError's parse errors
        raise AnswerFileError(str(path), f"answers file {path} is not valid JSON: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError does not derive from ValueError
        raise AnswerFileError(str(path), f"answers file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise AnswerFileError(str(path), f"answers file {path} must contain a mapping of fields, "
                                         f"not {type(data).__name__}")
    return data


def _check(path: Path, data: dict) -> None:
    def fail(field: str, value: Any, rule: str) -> None:
        raise AnswerFileError(str(path), f"{path}: field {field!r} has the invalid value {value!r}; {rule}", field)

    for key in data:
        if key not in _KNOWN_KEYS:
            fail(key, data[key], f"unknown field; known fields are {', '.join(_KNOWN_KEYS)}")
    triage = data.get("triage", {})
    if not isinstance(triage, dict):
        fail("triage", triage, "it must be a mapping with severity, affected_services, user_impact, failure_rate")
    if "severity" in triage and triage["severity"] not in SEVERITY_LEVELS:
        fail("triage.severity", triage["severity"], f"use one of {', '.join(SEVERITY_LEVELS)}")
    rate = triage.get("failure_rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1):
        fail("triage.failure_rate", rate, "use a fraction from 0 to 1 (0.5 means half the requests fail)")
    for index, status in enumerate(data.get("status", [])):
        if status not in STATUSES:
            fail(f"status[{index}]", status, f"use one of {', '.join(STATUSES)}")
    diagnosis = data.get("diagnosis", {})
    if not isinstance(diagnosis, dict):
        fail("diagnosis", diagnosis, "it must be a mapping with category, target and evidence")
    if "category" in diagnosis and diagnosis["category"] not in ROOT_CAUSE_CATEGORIES:
        fail("diagnosis.category", diagnosis["category"], f"use one of: {', '.join(ROOT_CAUSE_CATEGORIES)}")
    for index, action in enumerate(data.get("actions", [])):
        if not isinstance(action, dict) or not isinstance(action.get("action"), str) or not action["action"]:
            fail(f"actions[{index}]", action, f"each action needs action: like {', '.join(REMEDIATION_ACTIONS)}")
        if action["action"] in TARGETLESS_ACTIONS:
            continue
        if not isinstance(action.get("target"), str) or not action["target"]:
            fail(f"actions[{index}].target", action.get("target"), "name the target, like virtengine-node-1")
    for index, item in enumerate(data.get("action_items", [])):
        if not isinstance(item, dict) or item.get("type") not in ACTION_ITEM_TYPES or not item.get("text"):
            fail(f"action_items[{index}]", item, f"each item needs type (one of {', '.join(ACTION_ITEM_TYPES)}) and text")

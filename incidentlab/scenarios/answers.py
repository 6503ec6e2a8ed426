"""Answers files: a learner's decisions as data, read in batch mode instead of widgets.

An answers file is JSON or YAML; every key is optional, and a key that is present must follow
the "answers" schema in data/schemas/decisions.schema.json. Errors name the file, the field,
the value and the rule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import AnswerFileError

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
    from ..incident.schemas import check

    check("answers", data, str(path))
    for index, action in enumerate(data.get("actions", [])):
        if action["action"] not in TARGETLESS_ACTIONS and not action.get("target"):
            raise AnswerFileError(str(path), f"{path}: field 'actions[{index}].target' has the invalid value "
                                  f"{action.get('target')!r}; name the target, like virtengine-node-1",
                                  f"actions[{index}].target")

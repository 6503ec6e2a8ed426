"""Learner submissions: decision files read as data, validated, and turned into answers files.

Reads files from the submissions folder only. No value of a submission is ever executed or
used as a path; learner ids become file names only through safe_name().
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from .._resources import project_root
from ..errors import AnswerFileError

__all__ = ["Submission", "load_submission", "find_submissions", "safe_name", "to_answers", "SCHEMA_NAME"]

logger = logging.getLogger(__name__)

SCHEMA_NAME = "decisions.schema.json"
#: Largest decision file read, in bytes; a real export is a few tens of kilobytes.
MAX_FILE_BYTES = 2_000_000
#: Keyword options that a replayed action may carry, by action (the Lab method's parameters).
ACTION_OPTIONS = {"stop": {"timeout"}, "kill": {"signal"}}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_TARGET = re.compile(r"^virtengine-[a-z0-9-]+$")


@dataclasses.dataclass(frozen=True)
class Submission:
    """A valid decision file: its path, content hash, learner id (as given and as a file name), scenario and seed."""

    path: Path
    sha256: str
    learner: str
    learner_safe: str
    scenario: str
    seed: int
    data: dict

    @property
    def key(self) -> str:
        """Gradebook row key, also the name of the row's work folder: learner, scenario and seed."""
        return f"{self.learner_safe}--{self.scenario}--seed-{self.seed}"


def safe_name(text: str, limit: int = 64) -> str:
    """Return ``text`` as a file name of letters, digits, '_', '.' and '-' that cannot leave its folder.

    Anything else becomes '_', leading and trailing dots, '_' and '-' are dropped, and a name that had to change gets a
    short hash of the original, so that two different ids never share a file.
    """
    cleaned = _UNSAFE.sub("_", str(text))[:limit].strip("._-") or "learner"
    if cleaned == text:
        return cleaned
    digest = hashlib.sha256(str(text).encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned}-{digest}"


def find_submissions(directory: str | Path) -> list[Path]:
    """Return the decision files (*.json) directly in ``directory``, sorted by name; symlinks are skipped."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AnswerFileError(str(directory), f"submissions folder {directory} not found; "
                                              "pass the folder that holds the learners' decision files (*.json)")
    paths = []
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() != ".json":
            continue
        if path.is_symlink() or not path.is_file():
            logger.warning("skipping %s: not a regular file", path)
            continue
        paths.append(path)
    return paths


def load_submission(path: str | Path, scenarios: dict) -> Submission:
    """Read and validate one decision file against the schema and the scenario it names.

    ``scenarios`` maps scenario id to ScenarioKey. Raises AnswerFileError naming the file,
    the field and the problem.
    """
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) > MAX_FILE_BYTES:
        _fail(path, "(file)", f"is {len(raw)} bytes, more than the maximum {MAX_FILE_BYTES}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AnswerFileError(str(path), f"{path.name}: not valid JSON ({exc}); export the decision file "
                                         "again from the report cell", "(file)") from exc
    _check_schema(path, data)
    _check_scenario(path, data, scenarios)
    return Submission(path, hashlib.sha256(raw).hexdigest(), data["learner"], safe_name(data["learner"]),
                      data["scenario"], data["seed"], data)


def to_answers(data: dict) -> dict[str, Any]:
    """Return the answers file (the keys of scenarios/answers.py) that replays a decision file.

    Decisions that are missing or null are left out, so the notebook records no decision for them.
    """
    decisions = data.get("decisions") or {}
    answers: dict[str, Any] = {"learner": data["learner"]}
    for key in ("acknowledge", "status", "root_cause", "resolution", "action_items", "lessons_learned"):
        if decisions.get(key) is not None:
            answers[key] = decisions[key]
    for key in ("triage", "diagnosis"):
        given = {name: value for name, value in (decisions.get(key) or {}).items() if value is not None}
        if given:
            answers[key] = given
    # NOTE: status_updates are left out until the answers file accepts them; the notebook
    # cannot post them otherwise.
    actions = []
    for action in data.get("actions") or []:
        replay = {"action": action["action"], **(action.get("options") or {})}
        if action.get("target") is not None:
            replay["target"] = action["target"]
        actions.append(replay)
    if actions:
        answers["actions"] = actions
    return answers


def _check_schema(path: Path, data: Any) -> None:
    import jsonschema

    schema = json.loads((project_root() / "data" / "schemas" / SCHEMA_NAME).read_text(encoding="utf-8"))
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is not None:
        field = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        _fail(path, field, f"is invalid: {error.message}")


def _check_scenario(path: Path, data: dict, scenarios: dict) -> None:
    key = scenarios.get(data["scenario"])
    if key is None:
        _fail(path, "scenario", f"is {data['scenario']!r}, not a scenario with an answer key "
                                f"({', '.join(sorted(scenarios))})")
    allowed = key.data["actions"]
    for index, action in enumerate(data.get("actions") or []):
        name, target = action["action"], action.get("target")
        if name not in allowed:
            _fail(path, f"actions.{index}.action", f"is {name!r}; scenario {key.id!r} can replay {', '.join(allowed)}")
        if name != "halt" and (not isinstance(target, str) or not _TARGET.match(target)):
            _fail(path, f"actions.{index}.target", f"is {target!r}; name a lab target like virtengine-node-1")
        unknown = set(action.get("options") or {}) - ACTION_OPTIONS.get(name, set())
        if unknown:
            _fail(path, f"actions.{index}.options", f"has {', '.join(sorted(map(repr, unknown)))}, which {name!r} "
                                                   f"does not take ({', '.join(sorted(ACTION_OPTIONS.get(name, ()))) or 'no options'})")
    services = set(key.data["services"])
    affected = ((data["decisions"].get("triage") or {}).get("affected_services")) or []
    unknown_services = sorted(set(affected) - services)
    if unknown_services:
        _fail(path, "decisions.triage.affected_services", f"has {unknown_services}, which scenario {key.id!r} "
                                                          f"does not have; choose from {sorted(services)}")


def _fail(path: Path, field: str, problem: str) -> None:
    raise AnswerFileError(str(path), f"{path.name}: field {field!r} {problem}", field)

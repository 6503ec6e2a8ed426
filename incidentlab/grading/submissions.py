"""Learner submissions: decision files read as data and validated before a batch replays them.

Reads files from the submissions folder only. No value of a submission is ever executed or
used as a path, and learner ids become file names only through safe_name().
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from pathlib import Path

from ..errors import AnswerFileError
from ..incident.decisions import to_answers
from ..incident.schemas import check

__all__ = ["Submission", "load_submission", "find_submissions", "safe_name"]

logger = logging.getLogger(__name__)

#: Largest decision file read, in bytes: far above what a report cell exports, so only a bogus file hits it.
MAX_FILE_BYTES = 2_000_000
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
#: A target is a container, Deployment or ResourceQuota name: a DNS-1123 label, as Kubernetes requires.
_TARGET = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


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
    """Read and validate one decision file against its schema (decisions_file) and the scenario it names.

    ``scenarios`` maps scenario id to ScenarioKey. Raises AnswerFileError naming the file,
    the field and the problem.
    """
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) > MAX_FILE_BYTES:
        _fail(path, "(file)", f"{len(raw)} bytes", f"the maximum size is {MAX_FILE_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AnswerFileError(str(path), f"{path.name}: not valid JSON ({exc}); export the decision file "
                                         "again from the report cell", "(file)") from exc
    check("decisions_file", data, path.name)
    _check_scenario(path, data, scenarios)
    # The batch notebook reads the decisions as an answers file, so that file must be valid too.
    check("answers", to_answers(data), f"{path.name} (replayed as an answers file)")
    return Submission(path, hashlib.sha256(raw).hexdigest(), data["learner"], safe_name(data["learner"]),
                      data["scenario"], data["seed"], data)


def _check_scenario(path: Path, data: dict, scenarios: dict) -> None:
    key = scenarios.get(data["scenario"])
    if key is None:
        _fail(path, "scenario", data["scenario"], f"use a scenario with an answer key: {', '.join(sorted(scenarios))}")
    for index, action in enumerate(data["actions"]):
        _check_action(path, f"actions[{index}]", action, key)
    affected = (data["decisions"].get("triage") or {}).get("affected_services") or []
    unknown = sorted(set(affected) - set(key.data["services"]))
    if unknown:
        _fail(path, "decisions.triage.affected_services", unknown,
              f"scenario {key.id!r} has only the services {', '.join(key.data['services'])}")


def _check_action(path: Path, field: str, action: dict, key) -> None:
    name, target, options = action["action"], action["target"], action["options"]
    allowed_actions = key.data["actions"]
    if name not in allowed_actions:
        _fail(path, f"{field}.action", name, f"scenario {key.id!r} can replay {', '.join(allowed_actions)}")
    if name != "halt" and (not isinstance(target, str) or not _TARGET.match(target)):
        _fail(path, f"{field}.target", target, "name a lab target, like virtengine-node-1 or tenant-quota")
    allowed = allowed_actions[name]
    for option, value in options.items():
        if option not in allowed:
            _fail(path, f"{field}.options.{option}", value, f"{name!r} takes {', '.join(allowed) or 'no options'}")
        if not _plain(value):
            _fail(path, f"{field}.options.{option}", value,
                  "use a string, a number, null, or a mapping of names to strings and numbers")


def _plain(value) -> bool:
    """Return True for a scalar, null or a flat mapping of scalars, the shapes an action's options take."""
    scalars = (str, int, float, bool, type(None))
    if isinstance(value, dict):
        return all(isinstance(name, str) and isinstance(item, scalars) for name, item in value.items())
    return isinstance(value, scalars)


def _fail(path: Path, field: str, value, rule: str) -> None:
    raise AnswerFileError(str(path), f"{path.name}: field {field!r} has the invalid value {value!r}; {rule}", field)

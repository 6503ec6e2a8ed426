"""Scenario files (data/scenarios/*.yaml): answer keys and rubrics, and the variant a seed draws.

Reads local files only; the variant is recomputed from the scenario file and the seed, never
taken from a submission.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from pathlib import Path
from typing import Any

from .._resources import project_root
from ..errors import ConfigError

__all__ = ["ScenarioKey", "load_scenarios", "load_scenario_file", "SCHEMA_NAME"]

logger = logging.getLogger(__name__)

SCHEMA_NAME = "scenario.schema.json"


@dataclasses.dataclass(frozen=True)
class ScenarioKey:
    """One scenario's answer key: the parsed YAML of data/scenarios/<id>.yaml."""

    id: str
    data: dict
    path: Path

    @property
    def notebook(self) -> str:
        return self.data["notebook"]

    @property
    def rubric(self) -> list[dict]:
        return self.data["rubric"]

    @property
    def max_points(self) -> float:
        return float(sum(item["points"] for item in self.rubric))

    def variant(self, seed: int) -> dict:
        """Return the variant that ``seed`` draws: name, targets, cause, strength, expected severity and category.

        The draws follow the simulation classes: random.Random("<id>:<seed>") chooses the
        variant by the rule in the file's variant_draw, then draws the targets, then chooses the cause.
        """
        rng = random.Random(f"{self.id}:{seed}")
        if self.data.get("variant_draw", "sorted-choice") == "listed-choices":
            name = rng.choices(list(self.data["variants"]))[0]
        else:
            name = rng.choice(sorted(self.data["variants"]))
        spec = self.data["variants"][name]
        targets = spec["targets"]
        if isinstance(targets, dict) and "sample" in targets:
            targets = sorted(rng.sample(list(self.data["validators"]), targets["count"]))
        elif isinstance(targets, dict):
            targets = [rng.choice(list(targets["choice"]))]
        cause = spec["cause"]
        if isinstance(cause, dict):
            cause = rng.choice(list(cause["choice"]))
        return {
            "name": name,
            "targets": list(targets),
            "cause": cause,
            "strength": spec["strength"],
            "summary": spec["summary"],
            "expected_severity": spec["expected"]["severity"],
            "expected_category": spec["expected"]["category"],
        }


def load_scenarios(directory: str | Path | None = None) -> dict[str, ScenarioKey]:
    """Read and validate every data/scenarios/*.yaml; return them by scenario id.

    Raises ConfigError naming the file and the field when one breaks the schema, or when two
    files declare the same id.
    """
    directory = Path(directory) if directory else project_root() / "data" / "scenarios"
    keys: dict[str, ScenarioKey] = {}
    for path in sorted(directory.glob("*.yaml")):
        key = load_scenario_file(path)
        if key.id in keys:
            raise ConfigError(f"{path} declares scenario id {key.id!r}, already declared by {keys[key.id].path}; "
                              "give each scenario file its own id")
        keys[key.id] = key
    if not keys:
        raise ConfigError(f"no scenario file (*.yaml) in {directory}; grading needs one per simulation")
    return keys


def load_scenario_file(path: str | Path) -> ScenarioKey:
    """Read one scenario file and check it against the schema and its own cross-references.

    Raises ConfigError naming the file, the field and the problem.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"scenario file {path} cannot be read as YAML: {exc}") from exc
    _validate(path, data)
    if path.stem != data["id"]:
        raise ConfigError(f"scenario file {path} declares id {data['id']!r}; name the file {data['id']}.yaml")
    for name, variant in data["variants"].items():
        targets = variant["targets"]
        if not isinstance(targets, dict) or "sample" not in targets:
            continue
        listed = len(data.get("validators", []))
        if targets["count"] > listed:
            raise ConfigError(f"scenario file {path}: field 'variants.{name}.targets.count' is {targets['count']}, "
                              f"more than the {listed} validators listed")
    items = [item["item"] for item in data["rubric"]]
    if len(set(items)) != len(items):
        raise ConfigError(f"scenario file {path}: field 'rubric' lists an item twice ({items}); list each once")
    return ScenarioKey(data["id"], data, path)


def _validate(path: Path, data: Any) -> None:
    import jsonschema

    schema = json.loads((project_root() / "data" / "schemas" / SCHEMA_NAME).read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        field = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ConfigError(f"scenario file {path}: field {field!r} is invalid: {error.message}; "
                          f"fix it to match data/schemas/{SCHEMA_NAME}")

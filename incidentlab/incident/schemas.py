"""JSON schemas of the learner's decisions (data/schemas/decisions.schema.json) and their checks.

Each decision kind (triage, diagnosis, status_change, status_update, action, action_item, postmortem), an
answers file and the exported decision file has a schema; an error names the field, the value
and the rule.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from ..errors import AnswerFileError

__all__ = ["KINDS", "MISSING", "schema_for", "check", "errors"]

SCHEMA_FILE = "decisions.schema.json"
#: Decision kinds with a schema of their own.
KINDS = ("triage", "diagnosis", "status_change", "status_update", "action", "action_item", "postmortem", "answers",
         "decisions_file")
#: The value reported for a required field that is absent.
MISSING = "<missing>"


@functools.lru_cache(maxsize=1)
def _definitions() -> dict:
    from .._resources import data_path

    return json.loads(data_path("schemas", SCHEMA_FILE).read_text(encoding="utf-8"))


def schema_for(kind: str) -> dict:
    """Return the JSON schema of a decision ``kind``; raises ValueError for an unknown kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown decision kind {kind!r}; use one of {', '.join(KINDS)}")
    definitions = _definitions()
    return {"$schema": definitions["$schema"], "$defs": definitions["$defs"], "$ref": f"#/$defs/{kind}"}


@functools.lru_cache(maxsize=None)
def _validator(kind: str):
    import jsonschema

    return jsonschema.Draft202012Validator(schema_for(kind))


def errors(kind: str, value: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Return every problem of ``value`` as a decision ``kind``: (field, value, rule) tuples.

    ``field`` is a dotted path like "triage.severity" or "actions[0].target", starting
    with ``prefix``. An empty list means the value is valid.
    """
    problems = []
    for error in sorted(_validator(kind).iter_errors(value), key=lambda e: list(e.absolute_path)):
        problems.append(_describe(error, prefix))
    return problems


def check(kind: str, value: Any, source: str, prefix: str = "") -> None:
    """Raise AnswerFileError for the first problem of ``value`` as a decision ``kind``.

    ``source`` names where the value came from (a file path, "the triage form"). The message
    reads "SOURCE: field 'F' has the invalid value V; RULE".
    """
    problems = errors(kind, value, prefix)
    if problems:
        field, bad, rule = problems[0]
        value_text = "missing" if bad is MISSING else repr(bad)
        raise AnswerFileError(source, f"{source}: field {field!r} has the invalid value {value_text}; {rule}", field)


def _describe(error, prefix: str) -> tuple[str, Any, str]:
    """Turn a jsonschema error into (field, value, rule), looking into oneOf branches."""
    if error.validator == "oneOf" and error.context:
        # The branch that is not "null" describes the expected value.
        error = max(error.context, key=lambda e: len(e.absolute_path))
    path = list(error.absolute_path)
    value = error.instance
    if error.validator == "required":
        missing = next((name for name in error.validator_value if name not in error.instance), "")
        path, value = path + [missing], MISSING
        rule = _description(error.schema.get("properties", {}).get(missing, {})) or "this field is required"
        return _field(prefix, path), value, rule
    if error.validator == "additionalProperties":
        allowed = ", ".join(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        name = unknown[0] if unknown else ""
        return _field(prefix, path + [name]), error.instance.get(name), f"unknown field; known fields are {allowed}"
    rule = error.schema.get("description") or error.message
    return _field(prefix, path), value, rule


def _description(schema: dict) -> str | None:
    """Return a property's description, or the description of the definition it refers to."""
    if schema.get("description"):
        return schema["description"]
    reference = schema.get("$ref", "")
    if reference.startswith("#/$defs/"):
        return _definitions()["$defs"].get(reference.rsplit("/", 1)[1], {}).get("description")
    return None


def _field(prefix: str, path: list) -> str:
    text = prefix
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(the whole value)"

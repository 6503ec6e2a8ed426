"""Request helpers of the API server: label and field selectors, merge patches and the scale subresource."""

from __future__ import annotations

import re

__all__ = ["select", "merge_patch", "scale_of"]


def select(items: list[dict], query: dict) -> list[dict]:
    """Filter ``items`` by the query's labelSelector and fieldSelector."""
    labels = _parse_label_selector(query.get("labelSelector", ""))
    fields = _parse_field_selector(query.get("fieldSelector", ""))
    selected = []
    for obj in items:
        if not all(test(obj["metadata"].get("labels") or {}) for test in labels):
            continue
        if all((_field(obj, path) == value) == equal for path, equal, value in fields):
            selected.append(obj)
    return selected


def _field(obj: dict, path: str) -> str:
    value = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def _parse_field_selector(text: str) -> list[tuple[str, bool, str]]:
    selected = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        negated = "!=" in term
        if negated:
            operator = "!="
        elif "==" in term:
            operator = "=="
        else:
            operator = "="
        path, _, value = term.partition(operator)
        selected.append((path.strip(), not negated, value.strip()))
    return selected


def _parse_label_selector(text: str) -> list:
    tests = []
    for term in filter(None, (t.strip() for t in re.split(r",(?![^(]*\))", text))):
        set_match = re.match(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$", term)
        if set_match:
            key, op, values = set_match.group(1), set_match.group(2), {v.strip() for v in set_match.group(3).split(",")}
            tests.append(lambda labels, k=key, o=op, v=values: (labels.get(k) in v) == (o == "in"))
        elif "!=" in term:
            key, _, value = term.partition("!=")
            tests.append(lambda labels, k=key.strip(), v=value.strip(): labels.get(k) != v)
        elif "=" in term:
            key, _, value = term.replace("==", "=").partition("=")
            tests.append(lambda labels, k=key.strip(), v=value.strip(): labels.get(k) == v)
        elif term.startswith("!"):
            tests.append(lambda labels, k=term[1:].strip(): k not in labels)
        else:
            tests.append(lambda labels, k=term: k in labels)
    return tests


def merge_patch(current: dict, patch, headers) -> dict:
    """Apply a JSON merge patch (RFC 7386); a strategic merge patch is treated the same way.

    NOTE: lists in a strategic merge patch replace the whole list instead of merging by key.
    """
    if "json-patch" in headers.get("Content-Type", ""):
        raise ValueError("JSON Patch (application/json-patch+json) is not supported; use a merge patch")

    def merge(target, change):
        if not isinstance(change, dict):
            return change
        result = dict(target) if isinstance(target, dict) else {}
        for key, value in change.items():
            if value is None:
                result.pop(key, None)
            else:
                result[key] = merge(result.get(key), value)
        return result

    return merge(current, patch)


def scale_of(deployment: dict) -> dict:
    meta = deployment["metadata"]
    selector = ",".join(f"{k}={v}" for k, v in deployment["spec"].get("selector", {}).get("matchLabels", {}).items())
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")},
            "spec": {"replicas": deployment["spec"].get("replicas", 1)},
            "status": {"replicas": deployment.get("status", {}).get("replicas", 0), "selector": selector}}

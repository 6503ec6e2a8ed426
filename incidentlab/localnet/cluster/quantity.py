"""Kubernetes resource quantities ("500m", "2Gi", "4") parsed to integers and printed canonically."""

from __future__ import annotations

import re

__all__ = ["parse", "format_quantity", "is_cpu"]

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_PATTERN = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


def is_cpu(resource: str) -> bool:
    """Return True for resources counted in cores (cpu, requests.cpu, limits.cpu)."""
    return resource == "cpu" or resource.endswith(".cpu")


def parse(resource: str, text: str | int | float) -> int:
    """Parse a quantity of ``resource``: millicores for cpu, else whole units (bytes, pods).

    Raises ValueError naming the value when it is not a Kubernetes quantity.
    """
    match = _PATTERN.match(str(text).strip())
    if not match:
        raise ValueError(f"quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$', "
                         f"got {text!r} for {resource}")
    number, suffix = float(match.group(1)), match.group(2) or ""
    if suffix == "m":
        value = number / 1000
    else:
        value = number * _BINARY.get(suffix, _DECIMAL.get(suffix, 1))
    if is_cpu(resource):
        return round(value * 1000)
    # Kubernetes rounds a fractional byte or pod count up.
    return int(-(-value // 1))


def format_quantity(resource: str, value: int) -> str:
    """Print ``value`` (from parse) the way the API server prints it: "1", "500m", "12Gi", "3"."""
    if is_cpu(resource):
        return str(value // 1000) if value % 1000 == 0 else f"{value}m"
    if value == 0:
        return "0"
    for suffix, factor in sorted(_BINARY.items(), key=lambda item: -item[1]):
        if value % factor == 0 and resource != "pods" and not resource.endswith("pods"):
            return f"{value // factor}{suffix}"
    for suffix, factor in sorted(_DECIMAL.items(), key=lambda item: -item[1]):
        if value % factor == 0 and resource != "pods" and not resource.endswith("pods"):
            return f"{value // factor}{suffix}"
    return str(value)

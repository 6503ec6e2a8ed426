"""Faults with guaranteed rollback: the fault classes, the journal, cleanup and halt.

The names below load on first use, so that ``incidentlab --help``, which imports chaos.cli,
does not import the fault classes.
"""

from __future__ import annotations

import importlib

__all__ = ["FAULTS", "Fault", "Pause", "PauseCycle", "Stop", "Kill", "Restart", "CpuStress", "Latency", "Journal", "register"]

#: Public name -> submodule that defines it.
_HOMES = {"Journal": "journal", "Latency": "latency"}


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'incidentlab.chaos' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES.get(name, 'faults')}", __name__), name)

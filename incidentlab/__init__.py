"""incidentlab: a hands-on incident-response lab for VirtEngine operators.

``Lab.connect()`` is the entry point. Imports stay lazy so that validator processes, which
import this package, need only the standard library.
"""

from __future__ import annotations

__all__ = ["Lab", "LabConfig", "__version__"]

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Lab":
        from .lab import Lab

        return Lab
    if name == "LabConfig":
        from .config import LabConfig

        return LabConfig
    raise AttributeError(f"module 'incidentlab' has no attribute {name!r}")

"""Faults with guaranteed rollback: the fault classes, the journal, cleanup and halt."""

from .faults import FAULTS, CpuStress, Fault, Kill, Pause, PauseCycle, Restart, Stop, register
from .journal import Journal

__all__ = ["FAULTS", "Fault", "Pause", "PauseCycle", "Stop", "Kill", "Restart", "CpuStress", "Journal", "register"]

"""Faults with guaranteed rollback: the fault classes, the journal, cleanup and halt."""

from .faults import FAULTS, CpuStress, Fault, Kill, Pause, PauseCycle, Restart, Stop, register
from .journal import Journal
from .latency import Latency

__all__ = ["FAULTS", "Fault", "Pause", "PauseCycle", "Stop", "Kill", "Restart", "CpuStress", "Latency", "Journal", "register"]

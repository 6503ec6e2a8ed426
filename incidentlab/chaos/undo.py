"""Undo steps of the fault journal, run by the fault itself or by ``incidentlab cleanup``.

A step is data (``{"op": "resume", "target": ...}``), so a process that never saw the fault
object can undo it. Each step is safe to run twice and is verified after it runs.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from ..errors import IncidentLabError
from .journal import process_alive

__all__ = ["run_undo"]

logger = logging.getLogger(__name__)

VERIFY_TIMEOUT = 5.0


def run_undo(steps: list[dict], backend) -> tuple[bool, str]:
    """Run every undo step on ``backend``; return (all verified, a note saying what was done)."""
    notes, ok = [], True
    for step in steps:
        try:
            done = _STEPS[step["op"]](step, backend)
        except KeyError:
            done, ok = f"unknown undo step {step!r}", False
        except IncidentLabError as exc:
            done, ok = f"{step['op']} failed: {exc}", False
        except OSError as exc:
            done, ok = f"{step['op']} failed: {exc}", False
        if done.startswith("FAILED"):
            ok = False
        notes.append(done)
    return ok, "; ".join(notes) or "nothing to undo"


def _resume(step: dict, backend) -> str:
    """Bring a target back to running: unpause a paused one, start a stopped one, then verify."""
    target = step["target"]
    status = backend.inspect(target)["Status"]
    if status == "paused":
        backend.unpause(target)
        action = f"unpaused {target}"
    elif status in ("exited", "created", "dead"):
        backend.start(target)
        action = f"started {target}"
    else:
        action = f"{target} already {status}"
    state = backend.inspect(target)
    if state["Status"] != "running" or state["Paused"]:
        return f"FAILED: {target} is {state['Status']} after the undo, expected running"
    return action


def _kill_process(step: dict, backend) -> str:
    """Kill a helper process of the fault (a CPU burner), checked by pid and start time."""
    if not process_alive(step):
        return f"process {step['pid']} already gone"
    os.kill(step["pid"], signal.SIGKILL)
    deadline = time.monotonic() + VERIFY_TIMEOUT
    while process_alive(step) and time.monotonic() < deadline:
        time.sleep(0.02)
    if process_alive(step):
        return f"FAILED: process {step['pid']} still runs after SIGKILL"
    return f"killed process {step['pid']}"


_STEPS = {
    "resume": _resume,
    "kill_process": _kill_process,
}

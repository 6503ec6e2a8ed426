"""Helpers of the reliability suite: the real CLI in a subprocess and scans of /proc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def incidentlab(home: str | os.PathLike, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real ``incidentlab`` command with INCIDENTLAB_HOME set to ``home``; return the result."""
    env = {**os.environ, "INCIDENTLAB_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "incidentlab", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def processes_matching(*needles: bytes) -> list[int]:
    """Return the pids of live, non-zombie processes whose command line contains every needle."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z" and all(needle in command for needle in needles):
            found.append(int(entry))
    return found


def open_fds(pid: int) -> int:
    """Return how many file descriptors process ``pid`` has open (the entries of /proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))

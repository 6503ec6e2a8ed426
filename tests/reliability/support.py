"""Helpers of the reliability suite: labs per backend, the real CLI in a subprocess and scans of /proc.

A backend is one entry of BACKENDS. The Docker one is skipped without an engine and the validator
image, and fails instead when CI=true.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from incidentlab import Lab

#: Every backend the suite runs on. A new backend is one more entry (with its marker).
BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]
#: time_scale of the suite's labs: ten times faster than CometBFT timing.
TIME_SCALE = 0.1


def require_docker() -> None:
    """Skip when no Docker engine with the validator image is reachable; fail instead when CI=true."""
    from incidentlab.backends.docker_image import IMAGE, engine_client, image_exists
    from incidentlab.errors import ConfigError

    try:
        client = engine_client(timeout=30)
    except ConfigError as exc:
        reason = f"no Docker engine is reachable: {exc}"
    else:
        reason = None if image_exists(client) else f"the image {IMAGE} is missing"
        client.close()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the docker tests: run `bash .ci/docker-setup.sh` first", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def running_lab(backend: str, home: Path, time_scale: float = TIME_SCALE):
    """Start a lab on ``backend`` in ``home``, yield it, then halt its faults and stop it."""
    if backend == "docker":
        require_docker()
    lab = Lab.connect(backend, home=home, time_scale=time_scale)
    try:
        yield lab
    finally:
        try:
            lab.halt()
        finally:
            lab.down()


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

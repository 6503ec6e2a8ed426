"""Fixtures of the reliability suite: a running lab on each backend, in its own tmp lab home.

Every lab is halted and stopped at teardown. A backend is one entry of BACKENDS; the Docker one
is skipped without an engine and the validator image, and fails instead when CI=true.
"""

from __future__ import annotations

import contextlib
import os
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


@pytest.fixture(scope="module", params=BACKENDS)
def backend_lab(request, tmp_path_factory):
    """A running lab on each backend of BACKENDS, at TIME_SCALE, in its own lab home."""
    with running_lab(request.param, tmp_path_factory.mktemp(f"reliability-{request.param}") / "lab") as lab:
        yield lab

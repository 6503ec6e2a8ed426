"""Fixtures of the reliability suite: a running lab on each backend, in its own tmp lab home."""

from __future__ import annotations

import pytest

from .support import BACKENDS, running_lab


@pytest.fixture(scope="module", params=BACKENDS)
def backend_lab(request, tmp_path_factory):
    """A running lab on each backend of BACKENDS, at TIME_SCALE, in its own lab home."""
    with running_lab(request.param, tmp_path_factory.mktemp(f"reliability-{request.param}") / "lab") as lab:
        yield lab

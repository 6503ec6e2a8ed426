"""The HTTP status sampler against a real validator: 200 when up, 000 and the failure kind when not."""

from __future__ import annotations

import pytest

from incidentlab import Lab
from incidentlab.errors import ConfigError
from incidentlab.probes.http import sample_http


@pytest.fixture
def lab(tmp_path):
    lab = Lab.connect("local", home=tmp_path / "lab", time_scale=0.1)
    try:
        yield lab
    finally:
        lab.down()


def test_codes_for_running_paused_and_stopped(lab):
    up = lab.http_status(count=3)
    assert up["code"].tolist() == [200, 200, 200]
    assert up["error"].isna().all()
    with lab.fault("pause", "virtengine-node-0"):
        frozen = lab.http_status(count=2)
    assert frozen["code"].tolist() == [0, 0]
    assert frozen["error"].tolist() == ["timeout", "timeout"]
    with lab.fault("stop", "virtengine-node-0"):
        stopped = lab.http_status(count=2)
    assert stopped["error"].tolist() == ["refused", "refused"]


def test_sampler_rejects_bad_values():
    with pytest.raises(ConfigError, match="count=0"):
        sample_http("http://127.0.0.1:1/status", count=0)
    with pytest.raises(ConfigError, match="interval=-1"):
        sample_http("http://127.0.0.1:1/status", interval=-1)
    with pytest.raises(ConfigError, match="not an http:// URL on 127.0.0.1"):
        sample_http("http://example.com/status", count=1)

"""The veid-scoring-anomaly simulation end to end, on the variant the notebook test does not run."""

from __future__ import annotations

from pathlib import Path

import pytest

from incidentlab import Lab
from incidentlab.errors import ConfigError
from incidentlab.veid import SERVICE_NAME
from incidentlab.veid.revisions import DEFAULT_CONFIG

ANSWERS = Path(__file__).resolve().parent.parent / "data" / "answers" / "veid-scoring-anomaly-seed-7.yaml"


@pytest.fixture
def lab(tmp_path):
    lab = Lab.connect("local", home=tmp_path / "lab", time_scale=0.1)
    try:
        yield lab
    finally:
        try:
            lab.halt()
        finally:
            lab.down()


def test_tampered_model_replayed_rollback(lab):
    sim = lab.simulation("veid-scoring-anomaly", learner="ci", seed=7, mode="batch", answers_path=str(ANSWERS),
                         variant="tampered-model")
    try:
        sim.inject()
        assert not sim.verify(timeout=2).ok
        assert sim.incident.first("probe_failed") is not None
        assert "scoring errors" in sim.incident.first("probe_failed").message

        actions = sim.remediate()
        assert actions["action"].tolist() == ["rollback"]
        assert lab.veid.current()["config"] == DEFAULT_CONFIG

        verification = sim.verify()
        assert verification.ok, verification
        impact = sim.impact()
        assert impact["mean score under the bad revision"] == "no scores"
        assert int(impact["approved / rejected / failed since the fault"].split(" / ")[2]) > 0
    finally:
        assert sim.close() == []  # the rollback already fixed it, so close() has nothing to undo


def test_seed_picks_divisor_variant(lab):
    sim = lab.simulation("veid-scoring-anomaly", seed=7)
    assert sim.variant["name"] == "divisor-1000"
    assert sim.variant["expected_category"] == "data pipeline"
    assert sim.variant["targets"] == [SERVICE_NAME]
    with pytest.raises(ConfigError, match="variant='gamma'"):
        lab.simulation("veid-scoring-anomaly", variant="gamma")


def test_hotfix_deploy_recorded_and_recovers(lab):
    sim = lab.simulation("veid-scoring-anomaly", learner="ana", seed=7, variant="divisor-1000")
    try:
        sim.inject()
        lab.veid.deploy({"divisor": 255})
        actions = sim.remediate()
        assert actions["action"].tolist() == ["deploy"]  # the fault's own deploy is not the learner's action
        assert lab.veid.current()["author"] == "ana"
        assert sim.verify().ok
    finally:
        sim.close()

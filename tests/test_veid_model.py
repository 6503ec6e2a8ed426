"""The VEID scorer without a service: measured averages, the drift test and the model file's hash check."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from incidentlab.errors import ConfigError, ModelIntegrityError, VeidError
from incidentlab.veid import APPROVAL_THRESHOLD
from incidentlab.veid.captures import capture_bytes
from incidentlab.veid.model import MODEL_DIR, load_model, read_manifest, sha256_of
from incidentlab.veid.preprocess import PreprocessConfig, preprocess
from incidentlab.veid.stats import drift_test, load_baseline
from incidentlab.veid.train import measure_traffic

#: A seed unlike the training (42) and baseline (43) seeds, so the traffic is new to the model.
TRAFFIC_SEED = 2024
SAMPLES = 120


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def normal(model):
    return measure_traffic(model, TRAFFIC_SEED, SAMPLES)


def test_normal_traffic_scores_near_baseline(normal):
    scores = np.array(normal["scores"])
    assert 0.72 <= scores.mean() <= 0.88
    assert (scores >= APPROVAL_THRESHOLD).mean() >= 0.7


def test_divisor_1000_collapses_scores(model):
    faulty = measure_traffic(model, TRAFFIC_SEED, SAMPLES, PreprocessConfig(divisor=1000))
    scores = np.array(faulty["scores"])
    assert scores.mean() < 0.2
    assert (scores >= APPROVAL_THRESHOLD).mean() < 0.05
    assert faulty["inputs"]["max"] < 0.3  # the inputs look dark: nothing above 255/1000


def test_swapped_channels_lower_scores(model, normal):
    swapped = measure_traffic(model, TRAFFIC_SEED, SAMPLES, PreprocessConfig(channel_order="BGR"))
    assert np.mean(swapped["scores"]) < np.mean(normal["scores"]) - 0.25


def test_drift_test_flags_faulty_scores(model, normal):
    faulty = measure_traffic(model, TRAFFIC_SEED, 40, PreprocessConfig(divisor=1000))
    assert drift_test(faulty["scores"]).drift
    assert not drift_test(normal["scores"]).drift


def test_drift_test_needs_enough_scores():
    with pytest.raises(ValueError, match="at least 20"):
        drift_test([0.9] * 5)


def test_baseline_matches_manifest_version():
    baseline = load_baseline()
    assert baseline["model_version"] == read_manifest()["version"]
    assert 0.7 <= baseline["score_mean"] <= 0.9


def test_tampered_model_file_detected(tmp_path):
    manifest = read_manifest()
    tampered = tmp_path / manifest["file"]
    weights = json.loads((MODEL_DIR / manifest["file"]).read_text())
    weights["output_bias"] += 0.001
    tampered.write_text(json.dumps(weights))
    with pytest.raises(ModelIntegrityError, match=manifest["sha256"]) as caught:
        load_model(tampered)
    assert caught.value.actual == sha256_of(tampered)
    assert "python -m incidentlab.veid.train" in str(caught.value)


def test_untouched_copy_loads(tmp_path):
    copy = tmp_path / "copy.json"
    shutil.copy(MODEL_DIR / read_manifest()["file"], copy)
    assert load_model(copy).sha256 == read_manifest()["sha256"]


def test_same_input_same_score(model):
    tensor = preprocess(capture_bytes(5), PreprocessConfig())
    assert model.score(tensor) == model.score(tensor)
    assert tensor.shape == (224, 224, 3)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(VeidError, match="JPEG or PNG"):
        preprocess(b"not an image", PreprocessConfig())
    with pytest.raises(ConfigError, match="divisor=0"):
        PreprocessConfig(divisor=0)
    with pytest.raises(ConfigError, match="channel_order='GRB'"):
        PreprocessConfig(channel_order="GRB")
    with pytest.raises(ConfigError, match="version '9.9.9'"):
        load_model(version="9.9.9")


def test_docker_backend_has_no_veid(tmp_path):
    # Docker cannot run here; the client checks only the backend's name before any request.
    from types import SimpleNamespace

    from incidentlab import Lab
    from incidentlab.config import LabConfig
    from incidentlab.errors import ScenarioError

    lab = Lab(LabConfig(home=tmp_path, backend="docker"), SimpleNamespace(name="docker"))
    with pytest.raises(ScenarioError, match="local backend only"):
        lab.veid.revisions()

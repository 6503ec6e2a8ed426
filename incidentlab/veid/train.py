"""Train the VEID scorer on seeded procedural captures and write its weights, manifest and baseline.

Usage: ``python -m incidentlab.veid.train [--out data/veid] [--seed 42]``. It writes
veid-scorer-VERSION.json, manifest.json (SHA-256, version, how it was trained) and baseline.json
(scores and input statistics of normal traffic, measured with the new model).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path

import numpy as np

from .captures import CAPTURE_KINDS, encode_jpeg, generate_capture, traffic_kind
from .model import FEATURE_NAMES, MANIFEST, MODEL_DIR, Model, features, sha256_of
from .preprocess import PreprocessConfig, preprocess, tensor_stats

__all__ = ["train", "measure_traffic", "main", "VERSION"]

logger = logging.getLogger("incidentlab.veid.train")

VERSION = "1.0.0"
DEFAULT_SEED = 42
#: Training captures per kind; genuine ones get as many as the three rejected kinds together.
SAMPLES_PER_KIND = {"genuine": 480, "dark": 160, "blurred": 160, "faceless": 160}
HIDDEN_UNITS = 8
STEPS = 1500
LEARNING_RATE = 0.05
L2 = 0.01
#: Captures of normal traffic scored to measure the baseline.
BASELINE_SAMPLES = 400


def train(seed: int = DEFAULT_SEED) -> dict:
    """Generate the training captures from ``seed`` and fit the MLP; return the weights file's content."""
    rng = random.Random(seed)
    rows, labels = [], []
    for kind in CAPTURE_KINDS:
        for _ in range(SAMPLES_PER_KIND[kind]):
            tensor = preprocess(encode_jpeg(generate_capture(rng, kind)), PreprocessConfig())
            rows.append(features(tensor))
            labels.append(1.0 if kind == "genuine" else 0.0)
    x, y = np.array(rows), np.array(labels)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    params = _fit((x - mean) / std, y, np.random.default_rng(seed))
    return {
        "version": VERSION, "features": list(FEATURE_NAMES),
        "feature_mean": mean.tolist(), "feature_std": std.tolist(),
        "hidden_weights": params["w1"].tolist(), "hidden_bias": params["b1"].tolist(),
        "output_weights": params["w2"].tolist(), "output_bias": float(params["b2"]),
    }


def measure_traffic(model: Model, seed: int, count: int, config: PreprocessConfig | None = None) -> dict:
    """Score ``count`` captures of normal traffic drawn from ``seed``; return scores and input statistics."""
    config = config or PreprocessConfig()
    rng = random.Random(seed)
    scores, stats = [], []
    for _ in range(count):
        tensor = preprocess(encode_jpeg(generate_capture(rng, traffic_kind(rng))), config)
        scores.append(round(model.score(tensor), 6))
        stats.append(tensor_stats(tensor))
    inputs = {key: round(float(np.mean([s[key] for s in stats])), 4) for key in ("mean", "std", "min", "max")}
    return {"scores": scores, "score_mean": round(float(np.mean(scores)), 4), "inputs": inputs}


def main(argv: list[str] | None = None) -> int:
    """Train, write the weights, manifest and baseline into ``--out``; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m incidentlab.veid.train", description=__doc__)
    parser.add_argument("--out", default=str(MODEL_DIR), help="folder for the weights, manifest.json and baseline.json")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the training captures")
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", stream=sys.stderr, format="%(levelname)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    weights = train(args.seed)
    weights_path = out / f"veid-scorer-{VERSION}.json"
    weights_path.write_text(json.dumps(weights, indent=1) + "\n", encoding="utf-8")
    manifest = {
        "version": VERSION, "file": weights_path.name, "sha256": sha256_of(weights_path),
        "input_shape": [224, 224, 3], "output": "score in [0, 1], approved at 0.75",
        "training": {"seed": args.seed, "captures_per_kind": SAMPLES_PER_KIND, "hidden_units": HIDDEN_UNITS,
                     "method": f"full-batch gradient descent with Adam, {STEPS} steps, learning rate "
                               f"{LEARNING_RATE}, L2 {L2}, binary cross-entropy; genuine captures are 1, "
                               "dark, blurred and face-less ones 0",
                     "command": "python -m incidentlab.veid.train"},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    model = Model.from_weights(weights, path=str(weights_path), sha256=manifest["sha256"])
    baseline = {"model_version": VERSION, "seed": args.seed + 1, **measure_traffic(model, args.seed + 1, BASELINE_SAMPLES)}
    (out / "baseline.json").write_text(json.dumps(baseline) + "\n", encoding="utf-8")
    logger.info("wrote %s (sha256 %s); baseline mean score %.3f over %d captures",
                weights_path, manifest["sha256"], baseline["score_mean"], BASELINE_SAMPLES)
    return 0


def _fit(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> dict:
    """Fit a one-hidden-layer MLP with Adam on binary cross-entropy; return its parameters."""
    params = {"w1": rng.normal(0, 0.5, (x.shape[1], HIDDEN_UNITS)), "b1": np.zeros(HIDDEN_UNITS),
              "w2": rng.normal(0, 0.5, HIDDEN_UNITS), "b2": np.float64(0.0)}
    moments = {key: (np.zeros_like(value), np.zeros_like(value)) for key, value in params.items()}
    for step in range(1, STEPS + 1):
        hidden = np.tanh(x @ params["w1"] + params["b1"])
        predicted = 1.0 / (1.0 + np.exp(-(hidden @ params["w2"] + params["b2"])))
        error = (predicted - y) / len(y)
        back = np.outer(error, params["w2"]) * (1 - hidden ** 2)
        grads = {"w1": x.T @ back + L2 * params["w1"], "b1": back.sum(axis=0),
                 "w2": hidden.T @ error + L2 * params["w2"], "b2": error.sum()}
        for key, grad in grads.items():
            first, second = moments[key]
            first = 0.9 * first + 0.1 * grad
            second = 0.999 * second + 0.001 * grad ** 2
            moments[key] = (first, second)
            corrected = (first / (1 - 0.9 ** step)) / (np.sqrt(second / (1 - 0.999 ** step)) + 1e-8)
            params[key] = params[key] - LEARNING_RATE * corrected
    return params


if __name__ == "__main__":
    sys.exit(main())

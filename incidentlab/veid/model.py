"""The VEID scorer: features of a preprocessed capture and a small MLP over them, in numpy only.

Weights live in data/veid/ as JSON beside manifest.json, which records each version's SHA-256.
Loading checks the hash and rejects a changed file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from .._resources import project_root
from ..errors import ConfigError, ModelIntegrityError, VeidError

__all__ = ["Model", "features", "load_model", "check_model", "read_manifest", "sha256_of", "FEATURE_NAMES",
           "MODEL_DIR"]

FEATURE_NAMES = (
    "luminance mean", "luminance std", "face contrast", "sharpness",
    "centre red minus blue", "centre green minus blue", "dark pixel share", "luminance p99",
)
#: Luminance weights of ITU-R BT.601, on RGB channels.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
MODEL_DIR = project_root() / "data" / "veid"
MANIFEST = "manifest.json"


def features(tensor: np.ndarray) -> np.ndarray:
    """Return the model's feature vector of one (224, 224, 3) tensor, channels taken as RGB."""
    luma = tensor @ LUMA
    size = luma.shape[0]
    low, high = size // 4, size - size // 4
    centre = tensor[low:high, low:high]
    centre_luma = luma[low:high, low:high]
    border = (luma.sum() - centre_luma.sum()) / (luma.size - centre_luma.size)
    sharpness = np.abs(np.diff(luma, axis=0)).mean() + np.abs(np.diff(luma, axis=1)).mean()
    red, green, blue = (centre[:, :, channel].mean() for channel in range(3))
    return np.array([
        luma.mean(), luma.std(), centre_luma.mean() - border, sharpness,
        red - blue, green - blue, (luma < 0.1).mean(), np.percentile(luma, 99),
    ], dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class Model:
    """A loaded scorer: version, weights and the normalisation of its features."""

    version: str
    path: str
    sha256: str
    feature_mean: np.ndarray
    feature_std: np.ndarray
    hidden_weights: np.ndarray
    hidden_bias: np.ndarray
    output_weights: np.ndarray
    output_bias: float

    def score(self, tensor: np.ndarray) -> float:
        """Return the score in [0, 1] of one preprocessed (224, 224, 3) tensor."""
        return float(self.score_features(features(tensor)[None, :])[0])

    def score_features(self, rows: np.ndarray) -> np.ndarray:
        """Return the scores of a (n, features) array: a tanh hidden layer, then a sigmoid."""
        normalised = (rows - self.feature_mean) / self.feature_std
        hidden = np.tanh(normalised @ self.hidden_weights + self.hidden_bias)
        return 1.0 / (1.0 + np.exp(-(hidden @ self.output_weights + self.output_bias)))

    @classmethod
    def from_weights(cls, weights: dict, *, path: str = "", sha256: str = "") -> "Model":
        """Build a model from the weights file's content (the dict that train.py writes)."""
        return cls(
            version=weights["version"], path=path, sha256=sha256,
            feature_mean=np.array(weights["feature_mean"]), feature_std=np.array(weights["feature_std"]),
            hidden_weights=np.array(weights["hidden_weights"]), hidden_bias=np.array(weights["hidden_bias"]),
            output_weights=np.array(weights["output_weights"]), output_bias=float(weights["output_bias"]),
        )


def sha256_of(path: str | Path) -> str:
    """Return the hex SHA-256 of a file's bytes, like ``sha256sum``."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_manifest(directory: str | Path = MODEL_DIR) -> dict:
    """Return manifest.json of a model folder; raises ConfigError when it is missing or not JSON."""
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"VEID model manifest {path} not found; create it with "
                          "`python -m incidentlab.veid.train`") from None
    except ValueError as exc:
        raise ConfigError(f"VEID model manifest {path} is not valid JSON ({exc}); recreate it with "
                          "`python -m incidentlab.veid.train`") from exc


def load_model(path: str | Path | None = None, *, version: str | None = None, manifest: dict | None = None) -> Model:
    """Load a weights file after checking its SHA-256 against the manifest's entry for ``version``.

    ``path`` defaults to the manifest's file, ``version`` to the manifest's version. Raises
    ModelIntegrityError on a hash mismatch, ConfigError for an unknown version and VeidError for
    a missing or unreadable file.
    """
    manifest = manifest or read_manifest()
    version = version or manifest["version"]
    if version != manifest["version"]:
        raise ConfigError(f"model version {version!r} is not in the manifest; it has {manifest['version']!r}")
    path = Path(path) if path else MODEL_DIR / manifest["file"]
    if not path.is_file():
        raise VeidError(f"model file {path} not found; restore it from the repository or retrain with "
                        "`python -m incidentlab.veid.train`")
    actual = sha256_of(path)
    if actual != manifest["sha256"]:
        raise ModelIntegrityError(str(path), manifest["sha256"], actual)
    return Model.from_weights(json.loads(path.read_text(encoding="utf-8")), path=str(path), sha256=actual)


def check_model(model: Model | None, config: dict, error: str = "") -> dict:
    """Check a revision's model: file hash against the manifest, version, and one input scored twice.

    Takes the loaded model (None when loading failed), the revision's configuration and the
    load error. Returns model_file, model_version, manifest_version, expected_sha256,
    actual_sha256, loaded and error, plus probe_score, repeat_score and deterministic when a
    model is loaded.
    """
    from .captures import capture_bytes
    from .preprocess import PreprocessConfig, preprocess

    manifest = read_manifest()
    path = config.get("model_file") or str(MODEL_DIR / manifest["file"])
    try:
        actual = sha256_of(path)
    except OSError as exc:
        actual = f"unreadable: {exc}"
    check = {"model_file": path, "model_version": config["model_version"], "manifest_version": manifest["version"],
             "expected_sha256": manifest["sha256"], "actual_sha256": actual, "loaded": model is not None,
             "error": error}
    if model is not None:
        tensor = preprocess(capture_bytes(0), PreprocessConfig())
        first, second = model.score(tensor), model.score(tensor)
        check.update(probe_score=first, repeat_score=second, deterministic=first == second)
    return check

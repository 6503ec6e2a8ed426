"""Drift statistics of VEID scores and inputs against the baseline measured when the model was trained.

Reads data/veid/baseline.json; uses scipy for the two-sample test. No process or network access.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from .model import MODEL_DIR

__all__ = ["DriftResult", "drift_test", "load_baseline", "score_summary", "input_summary", "DRIFT_ALPHA",
           "MIN_SAMPLES"]

#: Significance level of the drift test: a p-value below it means the scores have drifted.
DRIFT_ALPHA = 0.01
#: Fewest recent scores the drift test accepts; fewer cannot tell drift from chance.
MIN_SAMPLES = 20


@dataclasses.dataclass(frozen=True)
class DriftResult:
    """Outcome of the two-sample Kolmogorov-Smirnov test of recent scores against the baseline."""

    statistic: float
    pvalue: float
    drift: bool
    recent_count: int
    baseline_count: int
    recent_mean: float
    baseline_mean: float

    def __repr__(self) -> str:
        verdict = "DRIFT" if self.drift else "no drift"
        return (f"KS two-sample test: {verdict} (D={self.statistic:.3f}, p={self.pvalue:.3g}, alpha={DRIFT_ALPHA}); "
                f"mean score {self.recent_mean:.3f} over {self.recent_count} recent verifications, "
                f"baseline {self.baseline_mean:.3f} over {self.baseline_count}")


def load_baseline(directory: str | Path = MODEL_DIR) -> dict:
    """Return baseline.json: scores and input statistics of normal traffic, measured by the training script."""
    return json.loads((Path(directory) / "baseline.json").read_text(encoding="utf-8"))


def drift_test(scores, baseline: dict | None = None) -> DriftResult:
    """Compare ``scores`` with the baseline's scores using scipy's two-sample Kolmogorov-Smirnov test.

    Raises ValueError when fewer than MIN_SAMPLES scores are given.
    """
    from scipy.stats import ks_2samp

    recent = np.asarray([s for s in scores if s is not None], dtype=float)
    if len(recent) < MIN_SAMPLES:
        raise ValueError(f"only {len(recent)} scores to test; the drift test needs at least {MIN_SAMPLES}, "
                         "so wait for more verifications")
    reference = np.asarray((baseline or load_baseline())["scores"], dtype=float)
    result = ks_2samp(recent, reference)
    return DriftResult(float(result.statistic), float(result.pvalue), bool(result.pvalue < DRIFT_ALPHA),
                       len(recent), len(reference), float(recent.mean()), float(reference.mean()))


def score_summary(scores, threshold: float) -> dict:
    """Return count, mean, median and approval rate of a list of scores."""
    values = np.asarray([s for s in scores if s is not None], dtype=float)
    if not len(values):
        return {"count": 0, "mean": float("nan"), "median": float("nan"), "approved": float("nan")}
    return {"count": int(len(values)), "mean": round(float(values.mean()), 3),
            "median": round(float(np.median(values)), 3), "approved": round(float((values >= threshold).mean()), 3)}


def input_summary(rows: list[dict]) -> dict:
    """Return the mean of each preprocessed-pixel statistic (mean, std, min, max) over recent verifications."""
    keys = ("mean", "std", "min", "max")
    scored = [row for row in rows if row.get("mean") is not None]
    return {key: round(float(np.mean([row[key] for row in scored])), 4) if scored else float("nan") for key in keys}

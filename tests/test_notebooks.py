"""Curriculum notebooks under nbval, in batch mode, each in its own lab home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import papermill
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ANSWERS = Path(__file__).resolve().parent.parent / "data" / "answers"

CASES = {
    "00-lab-setup.ipynb": {},
    "01-high-error-rate.ipynb": {"seed": 7, "answers_path": str(ANSWERS / "high-error-rate-seed-7.yaml")},
    "02-node-down.ipynb": {"seed": 2, "answers_path": str(ANSWERS / "node-down-seed-2.yaml")},
    "03-veid-scoring-anomaly.ipynb": {"seed": 2, "answers_path": str(ANSWERS / "veid-scoring-anomaly-seed-2.yaml")},
    "05-debrief-postmortem.ipynb": {},
}
#: Notebooks that run a simulation and so must save an incident record.
SIMULATIONS = {"01-high-error-rate.ipynb", "02-node-down.ipynb", "03-veid-scoring-anomaly.ipynb"}


@pytest.mark.notebook
@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_passes_nbval(name, tmp_path):
    # papermill only injects the parameters here; nbval then executes every cell and fails on any error.
    prepared = tmp_path / name
    parameters = {"mode": "batch", "time_scale": 0.1, "learner": "ci", "backend": "local", **CASES[name]}
    declared = papermill.inspect_notebook(str(NOTEBOOKS / name))
    parameters = {key: value for key, value in parameters.items() if key in declared}
    papermill.execute_notebook(str(NOTEBOOKS / name), str(prepared), parameters=parameters, prepare_only=True)
    env = {**os.environ, "INCIDENTLAB_HOME": str(tmp_path / "lab")}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", str(prepared)],
            cwd=str(NOTEBOOKS), env=env, capture_output=True, text=True, timeout=600,
        )
    finally:
        subprocess.run([sys.executable, "-m", "incidentlab", "lab", "down"], env=env, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    if name in SIMULATIONS:
        assert list((tmp_path / "lab" / "incidents").glob("INC-*.json")), "the report cell saved no record"

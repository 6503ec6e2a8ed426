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
    "04-provider-deployment-failure.ipynb": {"seed": 7, "answers_path": str(ANSWERS / "provider-deployment-failure-seed-7.yaml")},
    "05-debrief-postmortem.ipynb": {},
}
#: Notebooks that run a simulation and so must save an incident record.
SIMULATIONS = {"01-high-error-rate.ipynb", "02-node-down.ipynb", "03-veid-scoring-anomaly.ipynb",
               "04-provider-deployment-failure.ipynb"}


@pytest.fixture(scope="module")
def curriculum_home(tmp_path_factory):
    """One lab home for the whole curriculum, so that the debrief reads the records of 01 to 04."""
    return tmp_path_factory.mktemp("curriculum") / "lab"


def ensure_simulation_records(home: Path) -> None:
    """Run in batch, with papermill, each simulation whose record the home lacks (when 05 runs alone)."""
    from incidentlab.incident.record import IncidentStore
    from incidentlab.runner import run_notebook

    have = {incident.scenario for incident in IncidentStore(home).list()}
    for name in sorted(SIMULATIONS):
        scenario = name[3:-len(".ipynb")]
        if scenario not in have:
            result = run_notebook(str(NOTEBOOKS / name), {"time_scale": 0.1, "backend": "local", "learner": "ci",
                                                          **CASES[name]}, home=home)
            assert result.error is None, result.error


@pytest.mark.notebook
@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_passes_nbval(name, tmp_path, curriculum_home):
    # papermill only injects the parameters here; nbval then executes every cell and fails on any error.
    if name == "05-debrief-postmortem.ipynb":
        ensure_simulation_records(curriculum_home)
    prepared = tmp_path / name
    parameters = {"mode": "batch", "time_scale": 0.1, "learner": "ci", "backend": "local", **CASES[name]}
    declared = papermill.inspect_notebook(str(NOTEBOOKS / name))
    parameters = {key: value for key, value in parameters.items() if key in declared}
    papermill.execute_notebook(str(NOTEBOOKS / name), str(prepared), parameters=parameters, prepare_only=True)
    env = {**os.environ, "INCIDENTLAB_HOME": str(curriculum_home)}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", str(prepared)],
            cwd=str(NOTEBOOKS), env=env, capture_output=True, text=True, timeout=600,
        )
    finally:
        subprocess.run([sys.executable, "-m", "incidentlab", "lab", "down"], env=env, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    if name in SIMULATIONS:
        assert list((curriculum_home / "submissions").glob(f"ci-{name[3:-6]}-seed-*.json")), "no decision file"
    if name == "05-debrief-postmortem.ipynb":
        # The debrief summarises the records that the batch runs of 01 and 02 saved in this home.
        summary = (curriculum_home / "postmortems" / "simulation-summary.md").read_text()
        for simulation in SIMULATIONS:
            assert simulation[3:-6] in summary

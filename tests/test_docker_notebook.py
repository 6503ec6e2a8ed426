"""The node-down notebook on the Docker backend, run by papermill in batch mode.

A module of its own: container names are global, so no other Docker lab may be up meanwhile.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import papermill
import pytest

from incidentlab.runner import read_report
from test_chaos_docker import require_engine

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent


def test_node_down_notebook_on_docker(tmp_path):
    require_engine()
    home = tmp_path / "lab"
    output = tmp_path / "02-node-down.ipynb"
    env_home = os.environ.get("INCIDENTLAB_HOME")
    os.environ["INCIDENTLAB_HOME"] = str(home)
    try:
        papermill.execute_notebook(
            str(ROOT / "notebooks" / "02-node-down.ipynb"), str(output), kernel_name="python3",
            parameters={"mode": "batch", "time_scale": 0.1, "backend": "docker", "seed": 7,
                        "answers_path": str(ROOT / "data" / "answers" / "node-down-seed-7.yaml")},
            cwd=str(ROOT / "notebooks"), progress_bar=False)
    finally:
        subprocess.run([sys.executable, "-m", "incidentlab", "lab", "down"], capture_output=True, timeout=120,
                       env={**os.environ, "INCIDENTLAB_HOME": str(home)})
        if env_home is None:
            os.environ.pop("INCIDENTLAB_HOME", None)
        else:
            os.environ["INCIDENTLAB_HOME"] = env_home
    record = read_report(output)
    assert record is not None
    kinds = [event["kind"] for event in record["timeline"]]
    assert "recovery_verified" in kinds

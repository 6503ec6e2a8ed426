"""The incidentlab command as a user runs it: a real subprocess in its own lab home."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def incidentlab(home, *args, timeout=120):
    env = {**os.environ, "INCIDENTLAB_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "incidentlab", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "lab"
    yield home
    incidentlab(home, "lab", "down")


def test_help_lists_commands(tmp_path):
    result = incidentlab(tmp_path, "--help")
    assert result.returncode == 0
    assert "lab" in result.stdout
    assert "run" in result.stdout


def test_lab_up_status_down(home):
    up = incidentlab(home, "lab", "up", "--validators", "3", "--time-scale", "0.1")
    assert up.returncode == 0, up.stderr
    assert "virtengine-node-2" in up.stdout

    status = incidentlab(home, "lab", "status", "--json")
    data = json.loads(status.stdout)
    assert data["backend"] == "local"
    assert data["home"] == str(home.resolve())
    validators = [s for s in data["services"] if s["kind"] == "validator"]
    assert [s["name"] for s in validators] == [f"virtengine-node-{i}" for i in range(3)]
    for service in validators:
        assert service["kind"] == "validator"
        assert service["status"] == "running"
        assert service["rpc"].startswith("http://127.0.0.1:")
        assert service["metrics"].endswith("/metrics")

    table = incidentlab(home, "lab", "status")
    assert "Up " in table.stdout

    down = incidentlab(home, "lab", "down")
    assert down.returncode == 0
    after = json.loads(incidentlab(home, "lab", "status", "--json").stdout)
    assert {s["status"] for s in after["services"]} == {"exited"}


def test_bad_values_get_clear_errors(home):
    result = incidentlab(home, "lab", "up", "--time-scale", "-1")
    assert result.returncode == 2
    assert "time_scale=-1.0 is out of range" in result.stderr
    result = incidentlab(home, "run", "no-such-scenario")
    assert result.returncode == 2
    assert "'no-such-scenario' is neither a scenario id nor a notebook file" in result.stderr
    result = incidentlab(home, "run", "node-down", "-p", "seed", "12345")
    assert result.returncode == 2
    assert "no example answers file" in result.stderr
    result = incidentlab(home, "run", "node-down", "-p", "sed", "2")
    assert result.returncode == 2
    assert "has no parameter 'sed'" in result.stderr
    result = incidentlab(home, "lab", "up", "--time-scale", "0")
    assert result.returncode == 2
    assert "time_scale=0.0 is out of range" in result.stderr


def test_broken_answers_reported_before_lab_starts(home, tmp_path):
    broken = tmp_path / "answers.yaml"
    broken.write_text("triage: [unclosed\n")
    result = incidentlab(home, "run", "node-down", "-p", "answers_path", str(broken))
    assert result.returncode == 2
    assert "is not valid YAML" in result.stderr
    assert not (home / "localnet" / "network.json").exists()


@pytest.mark.notebook
def test_run_node_down_writes_report(home):
    result = incidentlab(home, "run", "node-down", "-p", "time_scale", "0.1", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    reports = list((home / "incidents").glob("INC-*.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    for expected in ("fault injected", "probe failed", "action: start virtengine-node-1", "recovery verified"):
        assert expected in text
    assert list((home / "runs").glob("*-02-node-down-learner.ipynb"))
    # The run started the localnet itself, so it stopped it afterwards.
    status = json.loads(incidentlab(home, "lab", "status", "--json").stdout)
    assert {s["status"] for s in status["services"]} == {"exited"}


@pytest.mark.notebook
def test_run_lab_setup_needs_no_answers(home):
    result = incidentlab(home, "run", "lab-setup", "-p", "time_scale", "0.1", "-p", "backend", "local", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "executed notebook" in result.stdout


@pytest.mark.notebook
def test_run_failed_still_saves_report(home, tmp_path):
    import yaml

    from incidentlab._resources import data_path

    answers = yaml.safe_load(data_path("answers", "node-down-seed-2.yaml").read_text())
    answers["actions"] = [{"action": "start", "target": "virtengine-node-99"}]
    path = tmp_path / "wrong-target.yaml"
    path.write_text(yaml.safe_dump(answers))
    result = incidentlab(home, "run", "node-down", "-p", "seed", "2", "-p", "time_scale", "0.1",
                         "-p", "answers_path", str(path), "-p", "learner", "ada", timeout=300)
    assert result.returncode != 0
    assert "virtengine-node-99" in result.stdout + result.stderr
    reports = list((home / "incidents").glob("INC-*.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    assert "the run failed before its report cell" in text
    assert "severity set: SEV-3" in text
    decisions = json.loads((home / "submissions" / "ada-node-down-seed-2.json").read_text())
    assert decisions["decisions"]["triage"]["severity"] == "SEV-3"

"""The node-down simulation end to end on real validator processes, and its input checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from incidentlab import Lab
from incidentlab.errors import AnswerFileError, ConfigError, ScenarioError
from incidentlab.runner import read_report

ANSWERS = Path(__file__).resolve().parent.parent / "data" / "answers"
TIME_SCALE = 0.1


@pytest.fixture
def lab(tmp_path):
    lab = Lab.connect("local", home=tmp_path / "lab", time_scale=TIME_SCALE)
    try:
        yield lab
    finally:
        lab.down()


def run_batch(lab: Lab, seed: int):
    sim = lab.simulation("node-down", learner="tester", seed=seed, mode="batch",
                         answers_path=ANSWERS / f"node-down-seed-{seed}.yaml")
    sim.inject()
    lab.heights(count=10)  # ten block times of the incident before anyone acts
    sim.acknowledge()
    sim.triage()
    sim.diagnose()
    sim.remediate()
    verification = sim.verify()
    sim.resolve()
    report = sim.report()
    sim.close()
    return sim, verification, report


def test_two_down_halts_and_recovers(lab):
    sim, verification, report = run_batch(lab, seed=7)
    assert sim.variant["name"] == "two-down"
    assert verification.ok, verification
    kinds = [event.kind for event in sim.incident.timeline]
    for kind in ("fault_injected", "probe_failed", "acknowledged", "action", "recovery_verified"):
        assert kind in kinds
    assert kinds.index("fault_injected") < kinds.index("probe_failed") < kinds.index("recovery_verified")
    assert sim.incident.status == "Resolved"
    assert sim.incident.time_to_recover is not None
    # The halt is measured from the chain itself: blocks stopped for far longer than a block time.
    assert report.record["impact"]["longest time without a new block (s)"] > 5 * lab.block_time
    assert report.markdown_path.read_text().startswith("# Incident Report")
    assert json.loads(report.json_path.read_text())["id"] == sim.incident.id


def test_one_down_keeps_chain_and_catches_up(lab):
    sim, verification, report = run_batch(lab, seed=2)
    assert sim.variant == {**sim.variant, "name": "one-down", "targets": ["virtengine-node-2"], "how": "kill"}
    assert verification.ok, verification
    assert lab.inspect("virtengine-node-2")["Status"] == "running"
    assert report.record["impact"]["blocks committed during the incident"] > 0


def test_unfixed_incident_is_not_verified(lab):
    sim = lab.simulation("node-down", seed=7, variant="two-down")
    sim.inject()
    verification = sim.verify(timeout=1.0)
    assert not verification.ok
    failing = set(verification.checks.loc[~verification.checks["ok"], "check"])
    assert "chain advancing" in failing
    assert sim.resolve().startswith("not resolved")
    undone = sim.close()
    assert sorted(undone) == [f"started {name}" for name in sim.variant["targets"]]
    assert all(lab.inspect(name)["Status"] == "running" for name in sim.variant["targets"])


def test_stop_exit_code_and_log_line(lab):
    sim = lab.simulation("node-down", seed=7)
    sim.inject()
    try:
        for name in sim.variant["targets"]:
            state = lab.inspect(name)
            assert (state["Status"], state["Running"], state["ExitCode"]) == ("exited", False, 0)
            assert "received SIGTERM" in lab.logs(name, tail=5)
    finally:
        sim.close()


def test_same_seed_same_variant(lab):
    first = lab.simulation("node-down", seed=11).variant
    lab.simulation_running = None
    second = lab.simulation("node-down", seed=11).variant
    assert first == second


def test_unknown_scenario_names_known_ones(lab):
    with pytest.raises(ScenarioError, match=r"unknown scenario 'nope'.*node-down"):
        lab.simulation("nope")


def test_batch_mode_needs_answers(lab):
    with pytest.raises(ConfigError, match="answers_path"):
        lab.simulation("node-down", mode="batch")


def test_bad_answers_field_is_named(lab, tmp_path):
    answers = tmp_path / "answers.yaml"
    answers.write_text("triage: {severity: SEV-9}\n")
    with pytest.raises(AnswerFileError, match=r"triage\.severity.*'SEV-9'.*SEV-1"):
        lab.simulation("node-down", mode="batch", answers_path=answers)


def test_broken_answers_file_is_rejected(lab, tmp_path):
    answers = tmp_path / "answers.json"
    answers.write_text("{not json")
    with pytest.raises(AnswerFileError, match="not valid JSON"):
        lab.simulation("node-down", mode="batch", answers_path=answers)
    with pytest.raises(AnswerFileError, match="not found"):
        lab.simulation("node-down", mode="batch", answers_path=tmp_path / "missing.yaml")


def test_unknown_variant_and_target(lab):
    with pytest.raises(ConfigError, match="variant='three-down'"):
        lab.simulation("node-down", variant="three-down")
    with pytest.raises(Exception, match="no target named 'virtengine-node-9'"):
        lab.start("virtengine-node-9")


def test_connect_rejects_settings_of_running_localnet(lab):
    with pytest.raises(ConfigError, match="time_scale=0.5"):
        Lab.connect("local", home=lab.config.home, time_scale=0.5)
    with pytest.raises(ConfigError, match="not available"):
        Lab.connect("kubernetes", home=lab.config.home)


def test_read_report_from_executed_notebook(tmp_path):
    import nbformat

    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "application/vnd.incidentlab.report+json": {"id": "INC-20260101-001"}, "text/plain": "r"})]
    notebook.cells.append(cell)
    path = tmp_path / "run.ipynb"
    nbformat.write(notebook, str(path))
    assert read_report(path) == {"id": "INC-20260101-001"}

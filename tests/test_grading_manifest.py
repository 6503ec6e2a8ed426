"""The grading manifest and the `incidentlab grade` command, without running a notebook."""

from __future__ import annotations

import csv
import json

import pytest
from helpers.roster import decision_file, write

from incidentlab.cli import main
from incidentlab.errors import ConfigError
from incidentlab.grading.manifest import Manifest


def test_manifest_round_trip(tmp_path):
    manifest = Manifest(tmp_path / "manifest.json")
    manifest.put({"key": "ada--node-down--seed-2", "status": "ok", "sha256": "abc", "time_scale": 0.2})
    again = Manifest(tmp_path / "manifest.json")
    assert again.is_done("ada--node-down--seed-2", "abc", 0.2)
    assert not again.is_done("ada--node-down--seed-2", "changed", 0.2)
    assert not again.is_done("ada--node-down--seed-2", "abc", 0.1)
    assert not again.is_done("bob--node-down--seed-2", "abc", 0.2)


def test_manifest_drops_absent_rows(tmp_path):
    manifest = Manifest(tmp_path / "manifest.json")
    manifest.put({"key": "a", "status": "ok"})
    manifest.put({"key": "b", "status": "ok"})
    manifest.remove_absent({"b"})
    assert list(Manifest(tmp_path / "manifest.json").rows) == ["b"]


@pytest.mark.parametrize("text", ["{not json", json.dumps({"version": 9, "rows": {}}), "[]"])
def test_corrupt_manifest_is_clear_error(tmp_path, text):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ConfigError, match="move it aside"):
        Manifest(tmp_path / "manifest.json")


def test_grade_command_invalid_only(tmp_path, capsys):
    write(tmp_path / "subs", "broken.json", "{")
    write(tmp_path / "subs", "wrong.json", decision_file(seed="7"))
    code = main(["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "out"), "--no-progress"])
    output = capsys.readouterr().out
    assert code == 0
    assert "rows: 2 invalid" in output
    with open(tmp_path / "out" / "gradebook.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["file"] for row in rows] == ["broken.json", "wrong.json"]
    assert "field 'seed'" in rows[1]["reason"]


def test_grade_command_bad_workers(tmp_path, capsys):
    (tmp_path / "subs").mkdir()
    code = main(["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "out"), "--workers", "0"])
    assert code == 2
    assert "workers=0 is out of range" in capsys.readouterr().err


def test_grade_command_missing_folder(tmp_path, capsys):
    code = main(["grade", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "submissions folder" in capsys.readouterr().err


def test_out_must_differ_from_submissions(tmp_path):
    from incidentlab.grading import grade

    with pytest.raises(ConfigError, match="is the submissions folder"):
        grade(tmp_path, tmp_path)


def test_graded_labs_skip_classic_ports(monkeypatch, tmp_path):
    from incidentlab.config import LabConfig
    from incidentlab.monitoring.prometheus_server import DEFAULT_PORT, _choose_port

    monkeypatch.setenv("INCIDENTLAB_CLASSIC_PORTS", "0")
    assert LabConfig(home=tmp_path).classic_ports is False
    assert _choose_port(None) != DEFAULT_PORT
    monkeypatch.delenv("INCIDENTLAB_CLASSIC_PORTS")
    assert LabConfig(home=tmp_path).classic_ports is True



def test_total_counts_graded_rows_only():
    from incidentlab.grading.report import gradebook_rows

    def row(scenario, status, score):
        return {"learner": "ada", "learner_safe": "ada", "scenario": scenario, "seed": 7, "status": status,
                "score": score, "max_score": 100.0, "items": [], "reason": None, "file": f"{scenario}.json"}

    totals = [r for r in gradebook_rows([row("node-down", "ok", 80.0), row("high-error-rate", "error", None)])
              if r["scenario"] == "TOTAL"]
    assert totals[0]["score"] == 80.0
    assert totals[0]["max_score"] == 100.0
    assert totals[0]["status"] == "incomplete: 1 of 2 not graded"
    nothing = [r for r in gradebook_rows([row("node-down", "timeout", None)]) if r["scenario"] == "TOTAL"]
    assert nothing[0]["score"] is None

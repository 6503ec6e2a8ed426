"""Batch grading on real notebooks and real embedded labs: the roster of submissions, parallel
workers, resume after an interruption, the wall-clock limit, dead kernels and kernels that
never start."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.roster import decision_file, write

from incidentlab.errors import ConfigError
from incidentlab.grading import grade
from incidentlab.grading.manifest import Manifest

pytestmark = [pytest.mark.integration, pytest.mark.notebook]

TIME_SCALE = 0.1
ROOT = Path(__file__).resolve().parent.parent
CODE = "__import__('os').system('touch /tmp/incidentlab-pwned'); {{7*7}} ${HOME} $(id)"
HTML = "<img src=x onerror=alert(1)>"
#: Roster of submissions: file name -> (decision file, expected status, expected score or None).
ROSTER = {
    "ada.json": (decision_file(), "ok", 100.0),
    "bob.json": (decision_file(learner="bob", scenario="high-error-rate", seed=7,
                               decisions_triage={"severity": "SEV-3", "affected_services": ["api-gateway"]},
                               decisions_diagnosis={"category": "container or orchestration",
                                                    "target": "virtengine-node-1", "evidence": "504s"},
                               actions=[{"action": "halt", "target": "all faults", "options": {}}]),
                 "ok", 77.5),
    "traversal.json": (decision_file(learner="../../outside"), "ok", 100.0),
    "code.json": (decision_file(learner="=HYPERLINK(\"http://127.0.0.1/x\")", decisions_root_cause=CODE,
                                decisions_diagnosis={"category": "container or orchestration", "target": HTML,
                                                     "evidence": CODE}),
                  "ok", 87.5),
    "nofix.json": (decision_file(learner="carol", seed=7,
                                 decisions_triage={"severity": "SEV-1"},
                                 decisions_diagnosis={"category": "container or orchestration",
                                                      "target": "virtengine-node-1"},
                                 actions=[{"action": "start", "target": "virtengine-node-1", "options": {}}]),
                   "ok", 67.5),
    "broken.json": ('{"schema": "incidentlab/decisions", "learner": ', "invalid", None),
    "wrongschema.json": (decision_file(learner="dan", schema_version=2), "invalid", None),
}


def lab_processes(folder: Path) -> list[int]:
    """Return the pids whose INCIDENTLAB_HOME is inside ``folder`` (kernels, localnet services, Prometheus)."""
    prefix = f"INCIDENTLAB_HOME={folder}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(item.startswith(prefix) for item in environ):
            pids.append(int(entry.name))
    return pids


def read_gradebook(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def comparable(row: dict) -> tuple:
    """A gradebook row without what changes run to run: measured times, attempts, paths."""
    kept = ("learner", "scenario", "seed", "variant", "status", "score", "max_score", "severity", "root_cause",
            "remediation", "timeline", "status_updates")
    return tuple(row[column] for column in kept)


@pytest.fixture(scope="module")
def roster_batch(tmp_path_factory):
    """The roster, graded once with two workers."""
    root = tmp_path_factory.mktemp("roster")
    for name, (data, _, _) in ROSTER.items():
        write(root / "subs", name, data)
    result = grade(root / "subs", root / "out", workers=2, time_scale=TIME_SCALE, timeout=300, progress=False)
    yield root, result
    assert lab_processes(root) == [], "a lab process outlived the batch"


def test_roster_scores_and_reasons(roster_batch):
    root, result = roster_batch
    by_file = {row["file"]: row for row in result.rows}
    for name, (_, status, score) in ROSTER.items():
        assert by_file[name]["status"] == status, (name, by_file[name]["reason"])
        assert by_file[name]["score"] == score, (name, by_file[name]["items"])
    items = {row["file"]: {item["item"]: item for item in row["items"]} for row in result.rows}
    assert items["bob.json"]["severity"]["reason"].startswith("Severity SEV-3 is one level from SEV-2")
    assert "virtengine-node-1 is not a faulty target" in items["bob.json"]["root_cause"]["reason"]
    assert "did not verify a recovery" in items["nofix.json"]["remediation"]["reason"]
    assert items["nofix.json"]["timeline"]["reason"] == "The timeline misses recovery_verified."
    assert "broken.json: not valid JSON" in by_file["broken.json"]["reason"]
    assert by_file["wrongschema.json"]["field"] == "schema_version"


def test_gradebook_has_rows_and_totals(roster_batch):
    root, _ = roster_batch
    rows = read_gradebook(root / "out" / "gradebook.csv")
    totals = {row["learner_file"]: row for row in rows if row["scenario"] == "TOTAL"}
    assert totals["ada"]["score"] == "100.0"
    assert totals["ada"]["max_score"] == "100.0"
    assert len([row for row in rows if row["status"] == "invalid"]) == 2
    # A learner id that a spreadsheet would run as a formula is written as text.
    assert any(row["learner"].startswith("'=HYPERLINK") for row in rows)


def test_nothing_written_outside_out(roster_batch):
    root, _ = roster_batch
    out = root / "out"
    assert sorted(path.name for path in root.iterdir()) == ["out", "subs"]
    assert not Path("/tmp/incidentlab-pwned").exists()
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve()), path
    feedback = sorted(path.name for path in (out / "feedback").iterdir())
    assert any(name.startswith("outside-") for name in feedback), feedback
    assert all(".." not in name for name in feedback)


def test_learner_strings_are_escaped(roster_batch):
    root, _ = roster_batch
    out = root / "out"
    summary = (out / "summary.html").read_text()
    assert "<img src=x" not in summary
    feedback = "".join(path.read_text() for path in (out / "feedback").iterdir())
    assert re.search(r"(?<!\\)<img", feedback) is None
    assert "\\<img src=x onerror=alert(1)\\>" in feedback


def test_summary_embeds_plots(roster_batch):
    root, _ = roster_batch
    summary = (root / "out" / "summary.html").read_text()
    assert summary.count('src="data:image/png;base64,iVBOR') == 2
    assert "high-error-rate" in summary
    assert "node-down" in summary


def test_parallel_labs_share_no_port(roster_batch):
    _, result = roster_batch
    jobs = [row for row in result.rows if row["status"] == "ok"]
    assert all(row["ports"] for row in jobs)
    spans = {}
    for row in jobs:
        end = time.mktime(time.strptime(row["graded_at"][:19], "%Y-%m-%dT%H:%M:%S"))
        spans[row["key"]] = (end - row["elapsed_s"], end)
    overlapping = 0
    for first in jobs:
        for second in jobs:
            a, b = spans[first["key"]], spans[second["key"]]
            if first["key"] < second["key"] and a[0] < b[1] and b[0] < a[1]:
                overlapping += 1
                assert not set(first["ports"]) & set(second["ports"]), (first["key"], second["key"])
    assert overlapping, "with two workers some jobs should have run at the same time"


def test_interrupted_batch_resumes(roster_batch, tmp_path):
    subs = tmp_path / "subs"
    for name in ("ada.json", "nofix.json"):
        write(subs, name, ROSTER[name][0])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    command = [sys.executable, "-m", "incidentlab", "grade", str(subs), "--out", str(out), "--workers", "1",
               "--time-scale", str(TIME_SCALE), "--no-progress"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "manifest.json").exists() and Manifest(out / "manifest.json").rows:
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr
    assert list(Manifest(out / "manifest.json").rows) == ["ada--node-down--seed-2"]
    assert lab_processes(tmp_path) == []

    resumed = grade(subs, out, workers=1, time_scale=TIME_SCALE, timeout=300, progress=False)
    assert (resumed.graded_now, resumed.skipped) == (1, 1)
    again = grade(subs, out, workers=1, time_scale=TIME_SCALE, timeout=300, progress=False)
    assert (again.graded_now, again.skipped) == (0, 2)

    # Graded with one worker (and a resume), the rows equal those the two-worker batch gave.
    root, _ = roster_batch
    two_workers = {comparable(row) for row in read_gradebook(root / "out" / "gradebook.csv")
                   if row["learner"] in ("ada", "carol") and row["scenario"] != "TOTAL"}
    one_worker = {comparable(row) for row in read_gradebook(out / "gradebook.csv") if row["scenario"] != "TOTAL"}
    assert one_worker == two_workers


def test_timeout_kills_and_cleans_up(tmp_path):
    write(tmp_path / "subs", "ada.json", decision_file())
    result = grade(tmp_path / "subs", tmp_path / "out", time_scale=TIME_SCALE, timeout=6, progress=False)
    (row,) = result.rows
    assert row["status"] == "timeout"
    assert row["score"] is None
    assert "longer than the limit of 6 s" in row["reason"]
    assert lab_processes(tmp_path) == []
    assert "Not graded (timeout)" in (tmp_path / "out" / "feedback" / "ada.md").read_text()


def test_dead_kernel_is_reported(tmp_path):
    write(tmp_path / "subs", "ada.json", decision_file())
    notebook = tmp_path / "out" / "notebooks" / "ada" / "node-down-seed-2.ipynb"
    found = []

    def kill_kernel() -> None:
        # Killed before its first cell, a kernel counts as one that failed to start, so wait for a cell.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not found:
            time.sleep(0.2)
            if not notebook.exists() or '"execution_count": 3' not in notebook.read_text():
                continue
            for pid in lab_processes(tmp_path):
                if b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
                    found.append(pid)

    killer = threading.Thread(target=kill_kernel)
    killer.start()
    result = grade(tmp_path / "subs", tmp_path / "out", time_scale=TIME_SCALE, timeout=300, progress=False)
    killer.join()
    (row,) = result.rows
    assert found, "the kernel was never seen"
    assert row["status"] == "dead-kernel", row["reason"]
    assert row["score"] is None
    assert lab_processes(tmp_path) == []


def test_kernel_start_failure_retried(tmp_path, monkeypatch):
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": ["/bin/false", "{connection_file}"],
                                                  "display_name": "broken", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    write(tmp_path / "subs", "ada.json", decision_file())
    result = grade(tmp_path / "subs", tmp_path / "out", time_scale=TIME_SCALE, timeout=120, progress=False)
    (row,) = result.rows
    assert row["status"] == "error"
    assert row["attempts"] == 3
    assert "the kernel did not start in 3 attempts" in row["reason"]
    assert "Kernel died before replying to kernel_info" in row["reason"]


def test_bad_options_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="workers=0 is out of range"):
        grade(tmp_path, tmp_path / "out", workers=0)
    with pytest.raises(ConfigError, match="timeout=-1 is invalid"):
        grade(tmp_path, tmp_path / "out", timeout=-1)
    with pytest.raises(ConfigError, match="time_scale=0 is out of range"):
        grade(tmp_path, tmp_path / "out", time_scale=0)


def test_rejected_job_not_retried(tmp_path):
    from incidentlab.grading.worker import run_job

    work = tmp_path / "work"
    work.mkdir()
    job = {"key": "ada--node-down--seed-2", "notebook": str(ROOT / "notebooks" / "02-node-down.ipynb"), "seed": 2,
           "learner": "ada",
           "time_scale": TIME_SCALE, "cell_timeout": 60, "answers_path": str(tmp_path / "missing.json"),
           "home": str(work / "lab"), "output_path": str(tmp_path / "out.ipynb"), "work_dir": str(work)}
    result = run_job(job, timeout=120)
    assert result.status == "error"
    assert result.attempts == 1
    assert "AnswerFileError" in result.error
    assert "missing.json not found" in result.error

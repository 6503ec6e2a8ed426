"""Benchmark batch grading: a roster of N learners graded with 1 and 2 workers, next to bare papermill runs.

Every notebook runs on a new embedded lab on 127.0.0.1 in a temporary folder.
The Markdown report goes to stdout and progress lines go to stderr.

Usage: python benchmarks/bench_grading.py [--learners 30] [--time-scale 0.2]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Measure the incidentlab of this checkout, even when another copy is installed.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from incidentlab.grading import grade  # noqa: E402
from incidentlab.incident.decisions import to_answers  # noqa: E402

#: The example answers files, one per simulation variant: every learner of the roster submits one of them.
EXAMPLES = sorted((ROOT / "data" / "answers").glob("*-seed-*.yaml"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", type=int, default=30, help="decision files in the roster (default 30)")
    parser.add_argument("--time-scale", type=float, default=0.2, help="time scale of every lab (default 0.2)")
    args = parser.parse_args()
    # SIGTERM stops the benchmark like Ctrl-C, so the running notebook's lab is cleaned up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-grading-") as folder:
        root = Path(folder)
        roster = write_roster(root / "subs", args.learners)
        timings = {}
        for workers in (1, 2):
            _progress(f"grading {args.learners} learners with {workers} worker(s)")
            started = time.monotonic()
            result = grade(roster, root / f"out-{workers}", workers=workers, time_scale=args.time_scale,
                           progress=False)
            timings[f"incidentlab grade, {workers} worker(s)"] = (time.monotonic() - started, result.counts())
        _progress(f"running the same {args.learners} notebooks with bare papermill, one after the other")
        started = time.monotonic()
        failures = bare_papermill(roster, root / "bare", args.time_scale)
        timings["bare papermill, sequential"] = (time.monotonic() - started, {"failed": failures})
    print(report(args, timings, load_before, os.getloadavg()[0]))
    return 0


def write_roster(folder: Path, learners: int) -> Path:
    """Write ``learners`` decision files that each fix their fault, cycling through every simulation's examples."""
    import yaml

    folder.mkdir(parents=True)
    for index in range(learners):
        path = EXAMPLES[index % len(EXAMPLES)]
        scenario, _, seed = path.stem.rpartition("-seed-")
        answers = yaml.safe_load(path.read_text(encoding="utf-8"))
        data = decision_file(answers, scenario, int(seed), f"learner-{index:03d}")
        (folder / f"learner-{index:03d}.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def decision_file(answers: dict, scenario: str, seed: int, learner: str) -> dict:
    """Return the decision file that a learner who made the decisions of ``answers`` would export."""
    keys = ("triage", "diagnosis", "root_cause", "resolution", "action_items", "lessons_learned")
    decisions = {key: answers.get(key) for key in keys}
    decisions.update(acknowledge=True, status=["Investigating", "Identified", "Monitoring", "Resolved"],
                     status_updates=[{**update, "time": "2026-12-04T12:00:00Z"}
                                     for update in answers.get("status_updates", [])][:1])
    actions = [{"action": action["action"], "target": action.get("target"),
                "options": {k: v for k, v in action.items() if k not in ("action", "target")}}
               for action in answers.get("actions", [])]
    return {"schema": "incidentlab/decisions", "schema_version": 1, "learner": learner, "scenario": scenario,
            "seed": seed, "decisions": decisions, "actions": actions, "timeline": []}


def bare_papermill(roster: Path, folder: Path, time_scale: float) -> int:
    """Run each roster notebook with the papermill command and a new lab home; return the number of failed runs."""
    from incidentlab.scenarios import NOTEBOOKS

    failures = 0
    for path in sorted(roster.glob("*.json")):
        data = json.loads(path.read_text())
        home = folder / path.stem
        home.mkdir(parents=True)
        answers = home / "answers.json"
        answers.write_text(json.dumps(to_answers(data)))
        env = {**os.environ, "INCIDENTLAB_HOME": str(home), "INCIDENTLAB_CLASSIC_PORTS": "0",
               "PYTHONPATH": str(ROOT)}
        command = ["papermill", str(ROOT / "notebooks" / NOTEBOOKS[data["scenario"]]), str(home / "out.ipynb"),
                   "-p", "learner", data["learner"], "-p", "seed", str(data["seed"]), "-p", "backend", "local",
                   "-p", "mode", "batch", "-p", "time_scale", str(time_scale), "-p", "answers_path", str(answers),
                   "--cwd", str(ROOT / "notebooks"), "--no-progress-bar"]
        try:
            failures += subprocess.run(command, env=env, capture_output=True, timeout=600).returncode != 0
        finally:
            subprocess.run([sys.executable, "-m", "incidentlab", "lab", "down"], env=env, capture_output=True,
                           timeout=120)
    return failures


def report(args, timings: dict, load_before: float, load_after: float) -> str:
    """Return the Markdown report: one row per way of running the roster."""
    lines = [f"- date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- machine: nproc {os.cpu_count()}, Python {platform.python_version()}, "
             f"1-minute load average {load_before:.2f} at the start, {load_after:.2f} at the end",
             f"- command: `python benchmarks/bench_grading.py --learners {args.learners} --time-scale {args.time_scale}`",
             "", "| run | wall time (s) | per notebook (s) | rows |", "| --- | ---: | ---: | --- |"]
    for name, (seconds, counts) in timings.items():
        rows = ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))
        lines.append(f"| {name} | {seconds:.1f} | {seconds / args.learners:.1f} | {rows} |")
    return "\n".join(lines)


def _progress(message: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

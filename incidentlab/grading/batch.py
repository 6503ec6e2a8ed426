"""Batch grading: a folder of decision files in, gradebook, feedback, notebooks and summary out.

Every file is written under the output folder; jobs run in a bounded pool of child processes,
each with its own lab home on 127.0.0.1.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as _dt
import logging
import shutil
from pathlib import Path

from .._fileio import write_json_atomic
from .._resources import notebooks_dir
from ..errors import AnswerFileError, ConfigError
from .manifest import Manifest
from .scenarios import load_scenarios
from .scoring import score_record
from ..incident.decisions import to_answers
from .submissions import Submission, find_submissions, load_submission, safe_name
from .worker import accept_jobs, run_job, stop_all

__all__ = ["grade", "BatchResult", "DEFAULT_TIMEOUT", "DEFAULT_TIME_SCALE"]

logger = logging.getLogger(__name__)

#: Wall-clock seconds one notebook may run before its process group is killed.
DEFAULT_TIMEOUT = 600.0
#: Time scale of graded labs: five times faster than CometBFT's timing.
DEFAULT_TIME_SCALE = 0.2
MAX_WORKERS = 16


@dataclasses.dataclass
class BatchResult:
    """Output paths of a batch, its rows, and the number of notebooks run now and skipped as already graded."""

    out: Path
    gradebook: Path
    summary: Path
    rows: list[dict]
    graded_now: int
    skipped: int

    def counts(self) -> dict[str, int]:
        """Return the number of rows per status."""
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return counts


def grade(submissions: str | Path, out: str | Path, *, workers: int = 1, timeout: float = DEFAULT_TIMEOUT,
          time_scale: float = DEFAULT_TIME_SCALE, progress: bool = True) -> BatchResult:
    """Grade every decision file in ``submissions`` and write the results under ``out``.

    Rows already in out/manifest.json for the same file content and time scale are skipped,
    so a second run, or a run after an interruption, grades only what is left. Raises
    ConfigError for a bad number of workers, timeout or time scale.
    """
    from ..config import LabConfig
    from .report import write_outputs

    _check_options(workers, timeout)
    LabConfig(home=Path("/"), time_scale=time_scale)  # raises ConfigError naming a bad time_scale
    out = Path(out).expanduser().resolve()
    if out == Path(submissions).expanduser().resolve():
        raise ConfigError(f"--out {out} is the submissions folder; write the results to another folder, "
                          "so that manifest.json is not read as a submission")
    out.mkdir(parents=True, exist_ok=True)
    scenarios = load_scenarios()
    manifest = Manifest(out / "manifest.json")

    # Validate every file first; a bad one becomes an "invalid" row and the batch goes on.
    valid, invalid = _read_submissions(Path(submissions), scenarios)
    for row in invalid:
        manifest.put(row)
    manifest.remove_absent({s.key for s in valid} | {row["key"] for row in invalid})
    pending = [s for s in valid if not manifest.is_done(s.key, s.sha256, time_scale)]
    logger.info("grading %d submissions (%d already graded, %d invalid) with %d workers",
                len(pending), len(valid) - len(pending), len(invalid), workers)

    _run_pool(pending, out, scenarios, manifest, workers=workers, timeout=timeout, time_scale=time_scale,
              progress=progress)
    rows = sorted(manifest.rows.values(), key=lambda row: (row["learner_safe"], row["scenario"], row["key"]))
    gradebook, summary = write_outputs(out, rows, scenarios)
    return BatchResult(out, gradebook, summary, rows, len(pending), len(valid) - len(pending))


def _check_options(workers: int, timeout: float) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"workers={workers!r} is out of range; use a whole number from 1 to {MAX_WORKERS} "
                          "(each worker runs one lab of about ten processes)")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ConfigError(f"timeout={timeout!r} is invalid; use the seconds one notebook may run, like 600")


def _read_submissions(directory: Path, scenarios: dict) -> tuple[list[Submission], list[dict]]:
    valid: list[Submission] = []
    invalid: list[dict] = []
    seen: dict[str, Submission] = {}
    for path in find_submissions(directory):
        try:
            submission = load_submission(path, scenarios)
        except AnswerFileError as exc:
            logger.warning("invalid submission %s: %s", path.name, exc)
            invalid.append(_invalid_row(path, str(exc), exc.field))
            continue
        if submission.key in seen:
            reason = (f"{path.name}: duplicate submission for learner {submission.learner!r}, scenario "
                      f"{submission.scenario!r} and seed {submission.seed}; {seen[submission.key].path.name} is graded")
            invalid.append(_invalid_row(path, reason, "learner"))
            continue
        seen[submission.key] = submission
        valid.append(submission)
    return valid, invalid


def _invalid_row(path: Path, reason: str, field: str | None) -> dict:
    return {"key": f"invalid--{safe_name(path.name)}", "learner": "", "learner_safe": "", "scenario": "",
            "seed": None, "file": path.name, "sha256": None, "status": "invalid", "reason": reason,
            "field": field, "score": None, "max_score": None, "items": [], "measured_s": {}}


def _run_pool(pending: list[Submission], out: Path, scenarios: dict, manifest: Manifest, *, workers: int,
              timeout: float, time_scale: float, progress: bool) -> None:
    from tqdm import tqdm

    accept_jobs()
    with tqdm(total=len(pending), desc="grading", unit="notebook", disable=not progress) as bar:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_grade_one, s, out, scenarios[s.scenario], timeout, time_scale): s for s in pending}
            try:
                for future in concurrent.futures.as_completed(futures):
                    row = future.result()
                    manifest.put(row)
                    bar.set_postfix_str(f"{row['key']}: {row['status']}")
                    bar.update()
            except BaseException:
                # Ctrl-C: jobs not started are dropped, running ones are killed and their labs cleaned up.
                # Their rows stay out of the manifest, so the next run grades them.
                pool.shutdown(wait=False, cancel_futures=True)
                stop_all()
                raise


def _grade_one(submission: Submission, out: Path, key, timeout: float, time_scale: float) -> dict:
    """Run one submission's notebook and score it; return its manifest row."""
    work_dir = _inside(out, out / "work" / submission.key)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    notebook = _inside(out, out / "notebooks" / submission.learner_safe / f"{submission.scenario}-seed-{submission.seed}.ipynb")
    notebook.parent.mkdir(parents=True, exist_ok=True)
    job = {"key": submission.key, "notebook": str(notebooks_dir() / key.notebook), "seed": submission.seed,
           "learner": submission.learner_safe, "time_scale": time_scale, "cell_timeout": timeout,
           "answers_path": str(write_json_atomic(work_dir / "answers.json", to_answers(submission.data))),
           "home": str(work_dir / "lab"), "output_path": str(notebook), "work_dir": str(work_dir)}
    result = run_job(job, timeout=timeout)
    # A graded row keeps its record in result.json and its notebook under notebooks/, so the lab
    # home (localnet data and logs) goes. A failed row keeps it for the instructor to read.
    if result.status == "ok":
        shutil.rmtree(work_dir / "lab", ignore_errors=True)

    variant = key.variant(submission.seed)
    row = {"key": submission.key, "learner": submission.learner, "learner_safe": submission.learner_safe,
           "scenario": submission.scenario, "seed": submission.seed, "variant": variant["name"],
           "file": submission.path.name, "sha256": submission.sha256, "time_scale": time_scale,
           "status": result.status, "reason": result.error, "field": None, "score": None,
           "max_score": key.max_points, "items": [], "measured_s": {}, "attempts": result.attempts,
           "elapsed_s": result.elapsed_s, "ports": result.ports, "notebook": str(notebook.relative_to(out)),
           "graded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if result.status == "ok":
        items = score_record(key.rubric, variant, result.record, submission.data)
        row["items"] = [dataclasses.asdict(item) for item in items]
        row["score"] = round(sum(item.points for item in items), 2)
        row["measured_s"] = result.record.get("measured_s") or {}
    logger.info("graded %s: %s score=%s", submission.key, result.status, row["score"])
    return row


def _inside(out: Path, path: Path) -> Path:
    """Return ``path`` resolved, raising ConfigError if it is not inside ``out``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(out):
        raise ConfigError(f"refusing to write {resolved}: it is outside the output folder {out}")
    return resolved

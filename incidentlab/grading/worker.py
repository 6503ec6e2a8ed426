"""One grading job: a pristine notebook run by papermill in a child process with its own lab home.

The parent (run_job) starts ``python -m incidentlab.grading.worker JOB.json`` in a new process
group, enforces the wall-clock limit from outside, and cleans up the lab home's processes and
faults when it has to kill the group.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .._fileio import read_json, write_json_atomic

__all__ = ["JobResult", "run_job", "accept_jobs", "stop_all", "cleanup_lab", "main", "STATUSES", "KERNEL_START_ATTEMPTS"]

logger = logging.getLogger(__name__)

#: Row statuses: "ok" is graded, and each other status is the reason why a row has no grade.
STATUSES = ("ok", "error", "timeout", "dead-kernel", "invalid")
#: Attempts of a job whose kernel failed to start; no other failure is retried.
KERNEL_START_ATTEMPTS = 3
#: Seconds to wait before the second attempt, doubled before the third.
KERNEL_START_BACKOFF = 1.0
#: Environment of the child: no classic ports, so that parallel labs do not all request 26657, 1317 and 9095.
CHILD_ENVIRONMENT = {"INCIDENTLAB_CLASSIC_PORTS": "0", "PYTHONUNBUFFERED": "1"}

#: Running workers by pid, with their lab homes, so that stop_all() can end them on Ctrl-C.
_RUNNING: dict[int, tuple[subprocess.Popen, Path]] = {}
_RUNNING_LOCK = threading.Lock()
_STOPPING = threading.Event()


@dataclasses.dataclass
class JobResult:
    """Outcome of one job: status (one of STATUSES), the error text, the report record, attempts and lab ports."""

    status: str
    error: str | None
    record: dict | None
    attempts: int
    elapsed_s: float
    ports: list[int] = dataclasses.field(default_factory=list)


def run_job(job: dict, *, timeout: float) -> JobResult:
    """Run ``job`` in a child process group, retrying only kernel-start failures; return its result.

    ``job`` contains key, notebook (its path), seed, learner, time_scale, answers_path, home, output_path
    and work_dir. After ``timeout`` seconds the whole group is killed and the lab home is cleaned
    up; the status is then "timeout".
    """
    started = time.monotonic()
    for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
        status, error, record, ports = _attempt(job, timeout)
        if status != "kernel-start":
            break
        logger.warning("job %s: kernel failed to start (attempt %d of %d): %s",
                       job["key"], attempt, KERNEL_START_ATTEMPTS, error)
        # A kernel often fails to start under a load spike, so give the machine a moment.
        if attempt < KERNEL_START_ATTEMPTS:
            time.sleep(KERNEL_START_BACKOFF * attempt)
    if status == "kernel-start":
        status, error = "error", f"the kernel did not start in {KERNEL_START_ATTEMPTS} attempts: {error}"
    return JobResult(status, error, record, attempt, round(time.monotonic() - started, 1), ports)


def accept_jobs() -> None:
    """Let run_job start workers again after a stop_all()."""
    _STOPPING.clear()


def stop_all() -> None:
    """Kill every running worker's process group and clean up its lab home (on Ctrl-C)."""
    with _RUNNING_LOCK:
        _STOPPING.set()
        running = list(_RUNNING.values())
    for process, home in running:
        logger.warning("stopping worker pid=%d of %s", process.pid, home)
        _kill_group(process)
        cleanup_lab(home)


def main(argv: list[str] | None = None) -> int:
    """Run the job file given as the only argument and write its result file; exit 0 once it is written."""
    argv = sys.argv[1:] if argv is None else argv
    job = read_json(argv[0])
    logging.basicConfig(filename=str(Path(job["work_dir"]) / "worker.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    status, error, record = _execute(job)
    write_json_atomic(Path(job["work_dir"]) / "result.json",
                      {"status": status, "error": error, "record": record, "ports": _lab_ports(job["home"])})
    return 0


def _attempt(job: dict, timeout: float) -> tuple[str, str | None, dict | None, list[int]]:
    work_dir = Path(job["work_dir"])
    result_path = work_dir / "result.json"
    result_path.unlink(missing_ok=True)
    process = _start_worker(job, work_dir)

    with _RUNNING_LOCK:
        if _STOPPING.is_set():
            _kill_group(process)
            return "error", "the batch was interrupted before this job ran", None, []
        _RUNNING[process.pid] = (process, Path(job["home"]))
    logger.info("job %s: worker pid=%d started, limit %.0f s", job["key"], process.pid, timeout)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        logger.warning("job %s: worker pid=%d passed %.0f s, killing its process group", job["key"], process.pid, timeout)
        _kill_group(process)
        cleanup_lab(Path(job["home"]))
        return "timeout", f"the notebook ran longer than the limit of {timeout:g} s and was stopped", None, []
    finally:
        with _RUNNING_LOCK:
            _RUNNING.pop(process.pid, None)

    result = read_json(result_path)
    if result is None:
        cleanup_lab(Path(job["home"]))
        return "error", f"the worker process exited with code {process.returncode} without a result", None, []
    return result["status"], result["error"], result["record"], result.get("ports", [])


def _start_worker(job: dict, work_dir: Path) -> subprocess.Popen:
    """Start ``python -m incidentlab.grading.worker`` on the job file, in a new process group."""
    job_path = write_json_atomic(work_dir / "job.json", job)
    # Jupyter's runtime files and IPython's profile stay in the job's folder, not in the user's home.
    env = {**os.environ, **CHILD_ENVIRONMENT, "JUPYTER_RUNTIME_DIR": str(work_dir / "jupyter-runtime"),
           "IPYTHONDIR": str(work_dir / "ipython")}
    with open(work_dir / "worker.err", "ab") as errors:
        return subprocess.Popen([sys.executable, "-m", "incidentlab.grading.worker", str(job_path)],
                                stdin=subprocess.DEVNULL, stdout=errors, stderr=errors, env=env,
                                start_new_session=True)


def _execute(job: dict) -> tuple[str, str | None, dict | None]:
    """Run the notebook and classify how it ended: ok, error, dead-kernel or kernel-start."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    from ..errors import IncidentLabError
    from ..runner import read_report, run_notebook

    parameters = {"learner": job["learner"], "seed": job["seed"], "time_scale": job["time_scale"],
                  "backend": "local", "mode": "batch", "answers_path": job["answers_path"]}
    output = Path(job["output_path"])
    try:
        result = run_notebook(job["notebook"], parameters, home=job["home"], output_path=output,
                              cell_timeout=job["cell_timeout"])
    except DeadKernelError as exc:
        return "dead-kernel", f"the kernel died while a cell ran: {exc}", _report_or_none(read_report, output)
    except CellTimeoutError as exc:
        return "timeout", f"a cell ran longer than {job['cell_timeout']:g} s: {exc}", None
    except IncidentLabError as exc:
        logger.error("job %s rejected before the notebook ran: %s", job["key"], exc)
        return "error", f"{type(exc).__name__}: {exc}", None
    except Exception as exc:  # papermill and jupyter_client raise many types when a kernel fails to start
        if not _any_cell_ran(output):
            return "kernel-start", f"{type(exc).__name__}: {exc}", None
        logger.exception("job %s failed", job["key"])
        return "error", f"{type(exc).__name__}: {exc}", _report_or_none(read_report, output)
    if result.error is not None:
        return "error", result.error, result.record
    if result.record is None:
        return "error", "the executed notebook has no report output (application/vnd.incidentlab.report+json)", None
    return "ok", None, result.record


def cleanup_lab(home: Path) -> None:
    """Stop what a killed job left in its lab home: its kernel, its faults, its localnet and Prometheus."""
    from ..backends.local import LocalBackend
    from ..chaos.cleanup import reconcile
    from ..config import LabConfig

    # jupyter_client 8 starts the kernel in its own session, so killing the worker's group does not reach it.
    for pid in _processes_of(home, "ipykernel"):
        _signal(pid, signal.SIGKILL)
    if (home / "localnet" / "network.json").exists():
        config = LabConfig(home=home, backend="local", time_scale=_time_scale(home))
        backend = LocalBackend(config)
        for entry in reconcile(home, {"local": backend}, force=True, reason="grading job stopped"):
            logger.info("undid fault %s on %s", entry["id"], entry.get("target"))
        backend.down(timeout=0)
    from ..runner import _stop_prometheus

    _stop_prometheus(home)
    for pid in _processes_of(home, ""):
        logger.warning("process pid=%d of %s was still running after cleanup; sending SIGKILL", pid, home)
        _signal(pid, signal.SIGKILL)


def _processes_of(home: Path, command_part: str) -> list[int]:
    """Return the pids of readable processes whose INCIDENTLAB_HOME is ``home`` and whose command line has ``command_part``."""
    marker = f"INCIDENTLAB_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in environ and command_part in command:
            found.append(int(entry.name))
    return found


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _any_cell_ran(output: Path) -> bool:
    import nbformat

    if not output.exists():
        return False
    notebook = nbformat.read(str(output), as_version=4)
    return any(cell.get("execution_count") for cell in notebook.cells if cell.cell_type == "code")


def _report_or_none(read_report, output: Path) -> dict | None:
    return read_report(output) if output.exists() else None


def _time_scale(home: Path) -> float:
    from ..localnet.network import load_network

    return load_network(home / "localnet").time_scale


def _lab_ports(home: str) -> list[int]:
    """Return every port of the lab's localnet network file, to show that parallel labs did not share one."""
    from ..localnet.network import load_network

    try:
        network = load_network(Path(home) / "localnet")
    except (OSError, ValueError, KeyError):
        return []
    return sorted(port for spec in network.specs for port in spec.ports.values())


if __name__ == "__main__":
    sys.exit(main())

"""Run a simulation notebook headless with papermill, in batch mode, on the embedded localnet."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import re
from pathlib import Path
from typing import Any

from .config import LabConfig, default_home
from .errors import ConfigError
from .scenarios import NOTEBOOKS, SCENARIOS

__all__ = ["run_notebook", "RunResult", "read_report", "resolve_notebook", "salvage_report"]

logger = logging.getLogger(__name__)

#: Parameters of a headless run unless the caller gives them: batch mode, five times faster.
RUN_DEFAULTS = {"mode": "batch", "time_scale": 0.2, "seed": 7, "learner": "learner", "backend": "auto"}
REPORT_MIME = "application/vnd.incidentlab.report+json"
#: Maximum seconds one cell may run: a day. nbclient 0.11, which papermill runs, treats 0 or a
#: negative timeout as no timeout at all, so those are rejected too.
MAX_CELL_TIMEOUT = 24 * 3600


@dataclasses.dataclass
class RunResult:
    """Paths of the executed notebook and its report, the report record, and the error if a cell failed."""

    output_path: Path
    report_path: Path | None
    record: dict | None
    error: str | None


def resolve_notebook(notebook: str) -> tuple[Path, str | None]:
    """Return (notebook path, scenario id or None) for a scenario id or a notebook path."""
    from ._resources import notebooks_dir

    if notebook in NOTEBOOKS:
        return notebooks_dir() / NOTEBOOKS[notebook], notebook
    path = Path(notebook).expanduser()
    if path.suffix == ".ipynb" and path.is_file():
        scenario = next((sid for sid, name in NOTEBOOKS.items() if name == path.name), None)
        return path.resolve(), scenario
    raise ConfigError(f"{notebook!r} is neither a scenario id nor a notebook file; scenario ids: "
                      f"{', '.join(sorted(NOTEBOOKS))}")


def run_notebook(notebook: str, parameters: dict[str, Any] | None = None, *, home: str | Path | None = None,
                 keep_up: bool = False, cell_timeout: float = 900.0, output_path: str | Path | None = None) -> RunResult:
    """Execute ``notebook`` with papermill and return where its output and report went.

    Takes a scenario id or a notebook path and papermill parameters (strings from the command
    line are converted like papermill's ``-p``). The executed notebook is saved under the lab
    home's runs/ folder even when a cell fails; the failure is returned in ``error``. The
    localnet is stopped afterwards unless it was already up before the run or ``keep_up``.
    """
    path, scenario = resolve_notebook(notebook)  # before the slow imports, so a typo fails fast
    if isinstance(cell_timeout, bool) or not isinstance(cell_timeout, (int, float)) or not 0 < cell_timeout <= MAX_CELL_TIMEOUT:
        raise ConfigError(f"cell timeout {cell_timeout!r} is out of range; give seconds above 0 and at most "
                          f"{MAX_CELL_TIMEOUT}, like 900 (the default)")

    import papermill
    from papermill.exceptions import PapermillExecutionError

    from .lab import _docker_or_local, _make_backend

    home_path = Path(home).expanduser().resolve() if home else default_home()
    _check_names(path, parameters or {})
    params = {**RUN_DEFAULTS, **{k: _convert(v) for k, v in (parameters or {}).items()}}
    seed = params.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} is invalid; use a whole number, like -p seed 7")
    # Only simulations have decisions to read; the lab-setup notebook has none.
    if scenario in SCENARIOS and not params.get("answers_path") and params["mode"] == "batch":
        params["answers_path"] = str(_example_answers(scenario, params["seed"]))
    if params.get("answers_path"):
        # The kernel runs in the notebook's folder, so a path relative to the caller must be made absolute.
        params["answers_path"] = str(Path(params["answers_path"]).expanduser().resolve())
        # A broken answers file is reported now, not after the lab has started.
        from .scenarios.answers import load_answers

        load_answers(params["answers_path"])
    _check_values(params)
    started = _dt.datetime.now(_dt.timezone.utc)
    if output_path is None:
        safe_learner = re.sub(r"[^A-Za-z0-9_.-]", "_", str(params["learner"]))[:64]
        output_path = home_path / "runs" / f"{started:%Y%m%dT%H%M%SZ}-{path.stem}-{safe_learner}.ipynb"
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)

    backend_name = params["backend"] if params["backend"] != "auto" else _docker_or_local(home_path)
    backend = _make_backend(backend_name, LabConfig(home=home_path, backend=backend_name))
    was_up = backend.is_up()
    os.environ["INCIDENTLAB_HOME"] = str(home_path)  # the kernel inherits it, so Lab.connect() finds this home
    error = None
    logger.info("running %s -> %s with %s", path.name, output_path, params)
    try:
        papermill.execute_notebook(str(path), str(output_path), parameters=params, kernel_name="python3",
                                   cwd=str(path.parent), execution_timeout=cell_timeout, progress_bar=False)
    except PapermillExecutionError as exc:
        error = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
    except BaseException as exc:  # a dead kernel or an interrupt: save what the run has, then re-raise
        salvage_report(home_path, started, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if not (was_up or keep_up):
            _stop_prometheus(home_path)
            backend.down()
    record = read_report(output_path) if output_path.exists() else None
    if record is None and error is not None:
        record = salvage_report(home_path, started, error)
    report_path = None
    if record is not None:
        report_path = home_path / "incidents" / f"{record['id']}.md"
    return RunResult(output_path, report_path, record, error)


def salvage_report(home: Path, since: _dt.datetime, error: str) -> dict | None:
    """Save the report of the newest incident begun since ``since`` in ``home``, noting the failure.

    A run that fails before its report cell still leaves the incident record, because the
    simulation saves it at each event. This adds a note with ``error``, writes the report and
    the decision file, and returns the record (None when no incident was begun).
    """
    from .incident.decisions import save_decisions
    from .incident.record import IncidentStore
    from .incident.report import save_report

    store = IncidentStore(home)
    begun = [incident for incident in store.list() if incident.created_at >= since]
    if not begun:
        return None
    incident = begun[-1]
    incident.add_event("note", "lab", f"the run failed before its report cell: {error}")
    save_report(incident, store)
    save_decisions(incident, store)
    logger.warning("run failed (%s); report of incident %s learner=%s saved from its record",
                   error, incident.id, incident.learner)
    return incident.to_json()


def read_report(notebook_path: str | Path) -> dict | None:
    """Return the incident record that an executed notebook's report cell emitted, or None."""
    import nbformat

    notebook = nbformat.read(str(notebook_path), as_version=4)
    found = None
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if REPORT_MIME in data:
                found = data[REPORT_MIME]
    return found


def _stop_prometheus(home: Path) -> None:
    """Stop the Prometheus that a notebook started for this lab home, if any."""
    from .monitoring.prometheus_server import PrometheusServer

    server = PrometheusServer.attach(home)
    if server is not None and server.is_running():
        server.stop()


def _check_names(path: Path, parameters: dict) -> None:
    """Reject a parameter the notebook does not declare, so a typo cannot pass unnoticed."""
    import papermill

    declared = set(papermill.inspect_notebook(str(path)))
    unknown = sorted(set(parameters) - declared)
    if unknown:
        raise ConfigError(f"{path.name} has no parameter {', '.join(map(repr, unknown))}; "
                          f"its parameters are {', '.join(sorted(declared))}")


def _check_values(params: dict) -> None:
    from .config import LabConfig
    from .scenarios.base import MODES

    if params.get("mode") not in MODES:
        raise ConfigError(f"mode={params.get('mode')!r} is invalid; use {' or '.join(map(repr, MODES))}")
    LabConfig(time_scale=params.get("time_scale"), home=Path("/"))  # raises ConfigError naming the value


def _example_answers(scenario: str, seed: Any) -> Path:
    from ._resources import project_root

    path = project_root() / "data" / "answers" / f"{scenario}-seed-{seed}.yaml"
    if not path.exists():
        raise ConfigError(f"no example answers file for scenario {scenario!r} with seed {seed!r} ({path}); "
                          "pass -p answers_path FILE, or use the seed of a file in data/answers/")
    return path


def _convert(value: Any) -> Any:
    """Convert a command-line string like papermill's ``-p``: int, float, bool, None, else str."""
    if not isinstance(value, str):
        return value
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value

"""Benchmark fault detection and command wall time on the embedded localnet and on Docker.

Measures the time from a fault's injection to its first failing probe sample, against the
probe interval, and the wall time of `incidentlab --help` and `incidentlab chaos pause`,
against `python -c pass` and `docker pause`. Prints a Markdown report.

Usage: python benchmarks/bench_faults.py [--runs 5] [--time-scale 0.2] [--no-docker]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Measure the incidentlab of this checkout, even when another copy is installed.
sys.path.insert(0, str(ROOT))

from bench_localnet import _code_version, _cpu_model, _progress, _ratio  # noqa: E402
from incidentlab import Lab  # noqa: E402
from incidentlab.probes.sampler import HeightSampler  # noqa: E402

#: The validator every fault lands on.
TARGET = "virtengine-node-1"
#: Fault kinds that make a /status probe fail, with parameters. Latency is left out: a
#: sampler keeps the RPC URLs it was started with, so it does not go through the fault proxy.
DETECTED_FAULTS = {
    "pause": {},
    "stop": {"timeout": 1},
    "kill": {},
}
#: Seconds before a fault counts as undetected and the benchmark fails.
DETECT_TIMEOUT = 30.0
#: Seconds one command may run before the benchmark fails.
COMMAND_TIMEOUT = 120.0


class BenchmarkError(Exception):
    """A measurement failed: a fault went undetected, or a command failed or hung."""


def main(argv: list[str] | None = None) -> int:
    """Run every measurement ``--runs`` times on each backend and print the Markdown report."""
    args = _parse_args(argv)
    backends = ["local"] + ([] if args.no_docker else ["docker"])
    load_at_start = os.getloadavg()[0]
    detection, commands, probes = {}, {}, {}
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix="incidentlab-bench-") as home:
            _progress(f"{backend}: starting a lab in {home}")
            lab = Lab.connect(backend, home=Path(home) / "lab", time_scale=args.time_scale)
            try:
                probes[backend] = probe_settings(lab)
                detection[backend] = bench_detection(lab, args.runs)
                commands[backend] = bench_commands(lab, args.runs, args.baseline)
            finally:
                lab.halt()
                lab.down()
    print(render_report(args, backends, probes, detection, commands, (load_at_start, os.getloadavg()[0])))
    return 0


def probe_settings(lab: Lab) -> tuple[float, float]:
    """Return (interval, timeout) of a simulation's probes in ``lab``, as Simulation._start_probes sets them."""
    return max(0.1, min(1.0, lab.block_time / 2)), lab.probe_timeout


def bench_detection(lab: Lab, runs: int) -> dict[str, list[float]]:
    """Inject each kind of DETECTED_FAULTS ``runs`` times; return seconds until the first failing sample, by kind.

    The clock starts just before inject() and stops when the sampler reports a failed probe
    of the target, on the sampler's own thread, as a simulation records "probe_failed".
    """
    interval, timeout = probe_settings(lab)
    figures: dict[str, list[float]] = {}
    for kind, params in DETECTED_FAULTS.items():
        for index in range(runs):
            _progress(f"{lab.backend.name}: detection of {kind}, run {index + 1}/{runs}")
            figures.setdefault(kind, []).append(_time_detection(lab, kind, params, interval, timeout))
    return figures


def bench_commands(lab: Lab, runs: int, baseline: Path | None = None) -> dict[str, list[float]]:
    """Time `incidentlab --help`, `python -c pass`, `incidentlab chaos pause` and, on Docker, `docker pause`.

    With ``baseline`` (another checkout of incidentlab) its `--help` and `chaos pause` are timed
    too, for before/after figures. Each pause is undone (untimed) before the next run. Returns
    seconds by command.
    """
    env = {**os.environ, "INCIDENTLAB_HOME": str(lab.config.home), "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "incidentlab"]
    figures: dict[str, list[float]] = {}
    for index in range(runs):
        _progress(f"{lab.backend.name}: commands, run {index + 1}/{runs}")
        figures.setdefault("python", []).append(_timed([sys.executable, "-c", "pass"], env))
        figures.setdefault("help", []).append(_timed([*cli, "--help"], env))
        if baseline is not None:
            figures.setdefault("help_baseline", []).append(_timed([*cli, "--help"], {**env, "PYTHONPATH": str(baseline)}))
        figures.setdefault("chaos_pause", []).append(_timed([*cli, "chaos", "pause", TARGET], env))
        _timed([*cli, "chaos", "unpause", TARGET], env)
        if baseline is not None:
            before = {**env, "PYTHONPATH": str(baseline)}
            figures.setdefault("chaos_pause_baseline", []).append(_timed([*cli, "chaos", "pause", TARGET], before))
            _timed([*cli, "chaos", "unpause", TARGET], env)
        if lab.backend.name == "docker":
            figures.setdefault("docker_pause", []).append(_timed(["docker", "pause", TARGET], env))
            _timed(["docker", "unpause", TARGET], env)
    return figures


def render_report(args: argparse.Namespace, backends: list[str], probes: dict, detection: dict, commands: dict,
                  loads: tuple[float, float]) -> str:
    """Return the Markdown report: machine, code, command, then one table for detection and one for commands.

    ``probes`` maps a backend to the (interval, timeout) of its probes.
    """
    import platform

    lines = [
        f"- machine: nproc {len(os.sched_getaffinity(0))}, {_cpu_model()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; 1-minute load average {loads[0]:.2f} at the start, "
        f"{loads[1]:.2f} at the end",
        f"- code: {_code_version()}",
        f"- command: `{' '.join(['python', os.path.relpath(__file__), *sys.argv[1:]])}`",
        f"- labs: 4 validators, time_scale {args.time_scale}; each cell is the median over {args.runs} runs "
        "(min–max in brackets)",
        "",
        "| fault | backend | injection to first failing sample (s) | probe interval (s) | probe timeout (s) | ratio to the interval |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for backend in backends:
        interval, timeout = probes[backend]
        for kind, values in detection[backend].items():
            lines.append(f"| {kind} | {backend} | {_cell(values)} | {interval:g} | {timeout:g} | "
                         f"{_ratio(statistics.median(values) / interval)} |")
    lines += ["", "| command | backend | wall time (s) | peer | peer wall time (s) | ratio |",
              "| --- | --- | ---: | --- | ---: | ---: |"]
    for backend in backends:
        figures = commands[backend]
        peers = [("help", "`incidentlab --help`", "python", "`python -c pass`"),
                 ("chaos_pause", "`incidentlab chaos pause`", "python", "`python -c pass`")]
        if "help_baseline" in figures:
            peers.insert(1, ("help", "`incidentlab --help`", "help_baseline", "`--help` of the baseline checkout"))
            peers.append(("chaos_pause", "`incidentlab chaos pause`", "chaos_pause_baseline",
                          "`chaos pause` of the baseline checkout"))
        if "docker_pause" in figures:
            peers += [("help", "`incidentlab --help`", "docker_pause", "`docker pause`"),
                      ("chaos_pause", "`incidentlab chaos pause`", "docker_pause", "`docker pause`")]
        for key, title, peer_key, peer_title in peers:
            ratio = statistics.median(figures[key]) / statistics.median(figures[peer_key])
            lines.append(f"| {title} | {backend} | {_cell(figures[key])} | {peer_title} | "
                         f"{_cell(figures[peer_key])} | {_ratio(ratio)} |")
    return "\n".join(lines)


# -- private helpers ------------------------------------------------------------------


def _time_detection(lab: Lab, kind: str, params: dict, interval: float, timeout: float) -> float:
    detected = threading.Event()
    started = [0.0]
    seen = [0.0]

    def on_sample(sample: dict) -> None:
        if started[0] and not sample["ok"] and sample["target"] == TARGET and not detected.is_set():
            seen[0] = time.perf_counter()
            detected.set()

    with HeightSampler(lab.endpoints(), interval=interval, timeout=timeout, on_sample=on_sample):
        time.sleep(3 * interval)  # a few healthy rounds first
        fault = lab.fault(kind, TARGET, **params)
        started[0] = time.perf_counter()
        with fault:
            if not detected.wait(DETECT_TIMEOUT):
                raise BenchmarkError(f"no failing probe of {TARGET} within {DETECT_TIMEOUT:.0f} s of a {kind} fault")
    _wait_healthy(lab)
    return seen[0] - started[0]


def _wait_healthy(lab: Lab) -> None:
    """Wait until the target responds to /status again, so the next run starts from a healthy lab."""
    from incidentlab.probes.rpc import probe_status

    deadline = time.monotonic() + DETECT_TIMEOUT
    while time.monotonic() < deadline:
        if probe_status(lab.endpoints()[TARGET], lab.probe_timeout)["ok"]:
            return
        time.sleep(0.05)
    raise BenchmarkError(f"{TARGET} did not respond to /status within {DETECT_TIMEOUT:.0f} s of the fault's revert")


def _timed(command: list[str], env: dict) -> float:
    # `python -m` puts the working folder first on sys.path, ahead of PYTHONPATH, so each command
    # runs in the checkout it measures.
    start = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=env["PYTHONPATH"], capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise BenchmarkError(f"`{' '.join(command)}` exited {result.returncode}: {result.stderr.strip()[-300:]}")
    return elapsed


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per figure; cells are medians over them (default 5)")
    parser.add_argument("--time-scale", type=float, default=0.2, help="LabConfig.time_scale of the labs (default 0.2)")
    parser.add_argument("--no-docker", action="store_true", help="measure the local backend only")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout of the repository whose `--help` and `chaos pause` are timed too "
                             "(before/after)")
    args = parser.parse_args(argv)
    if args.baseline is not None and not (args.baseline / "incidentlab" / "cli.py").is_file():
        parser.error(f"--baseline {args.baseline} is not a checkout of this repository; it has no incidentlab/cli.py")
    if args.runs < 1:
        parser.error(f"--runs {args.runs} is invalid; give a whole number of 1 or more")
    if not args.no_docker and shutil.which("docker") is None:
        parser.error("the docker command is not installed; install it, or pass --no-docker")
    return args


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark each simulation notebook in batch mode against a papermill run of a one-cell notebook.

The one-cell notebook is the floor of any papermill run on this machine (kernel start and
shutdown), so the ratio shows what a simulation adds on top. Every run gets a new lab home,
starts its own localnet and stops it.

Usage: python benchmarks/bench_notebooks.py [--runs 3] [--time-scale 0.1] [--notebooks high-error-rate node-down]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Measure the incidentlab of this checkout, even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from incidentlab.runner import run_notebook  # noqa: E402
from incidentlab.scenarios import NOTEBOOKS, SCENARIOS  # noqa: E402


def one_cell_notebook(folder: Path) -> Path:
    """Write a notebook whose only cell is a parameters cell with a no-op, and return its path."""
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    cell = nbformat.v4.new_code_cell("seed = 0")
    cell.metadata["tags"] = ["parameters"]
    notebook.cells = [cell, nbformat.v4.new_code_cell("seed + 1")]
    path = folder / "one-cell.ipynb"
    nbformat.write(notebook, path)
    return path


def time_floor(folder: Path) -> float:
    """Return the seconds papermill takes to run the one-cell notebook."""
    import papermill

    source = one_cell_notebook(folder)
    started = time.perf_counter()
    papermill.execute_notebook(str(source), str(folder / "one-cell-out.ipynb"), parameters={"seed": 1},
                               kernel_name="python3", progress_bar=False)
    return time.perf_counter() - started


def time_simulation(scenario: str, folder: Path, time_scale: float, seed: int) -> float:
    """Return the seconds a batch run of ``scenario`` takes in a new lab home, localnet start included."""
    started = time.perf_counter()
    result = run_notebook(scenario, {"seed": seed, "time_scale": time_scale, "backend": "local",
                                     "learner": "bench"}, home=folder / "lab")
    elapsed = time.perf_counter() - started
    if result.error:
        raise SystemExit(f"{scenario} failed in {folder}: {result.error}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per notebook (default 3)")
    parser.add_argument("--time-scale", type=float, default=0.1, help="the CI time scale (default 0.1)")
    parser.add_argument("--seed", type=int, default=7, help="seed of every simulation (default 7)")
    parser.add_argument("--notebooks", nargs="*", default=[s for s in SCENARIOS if s in NOTEBOOKS],
                        help="scenario ids (default: every simulation)")
    args = parser.parse_args(argv)
    floors, timings = [], {scenario: [] for scenario in args.notebooks}
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-floor-") as folder:
            floors.append(time_floor(Path(folder)))
        print(f"run {run + 1}: one-cell notebook {floors[-1]:.2f} s", file=sys.stderr)
        for scenario in args.notebooks:
            with tempfile.TemporaryDirectory(prefix=f"bench-{scenario}-") as folder:
                timings[scenario].append(time_simulation(scenario, Path(folder), args.time_scale, args.seed))
            print(f"run {run + 1}: {scenario} {timings[scenario][-1]:.2f} s", file=sys.stderr)
    floor = statistics.median(floors)
    print(f"Notebooks in batch mode, time_scale {args.time_scale:g}, seed {args.seed}, median of {args.runs} runs "
          f"({platform.python_implementation()} {platform.python_version()}, {platform.machine()}).\n")
    print("| notebook | median (s) | ratio to a one-cell papermill run |")
    print("| --- | --- | --- |")
    print(f"| one-cell notebook (the floor) | {floor:.2f} | 1.0x |")
    for scenario, values in timings.items():
        median = statistics.median(values)
        print(f"| {NOTEBOOKS[scenario]} | {median:.2f} | {median / floor:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

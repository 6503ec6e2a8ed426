"""The ``incidentlab`` command: lab up/down/status, chaos, cleanup, run and grade.

Imports stay inside the command functions so that ``incidentlab --help`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

__all__ = ["main", "build_parser"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="incidentlab",
        description="Hands-on incident-response lab for VirtEngine operators.",
    )
    parser.add_argument("--home", help="lab home folder (default: $INCIDENTLAB_HOME or ~/incident-lab)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v INFO, -vv DEBUG)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    lab = commands.add_parser("lab", help="start, stop and list the embedded localnet")
    lab_commands = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    up = lab_commands.add_parser("up", help="start the localnet (created on first use)")
    up.add_argument("--validators", type=int, default=None, help="number of validators (default 4)")
    up.add_argument("--time-scale", type=float, default=None,
                    help="multiplier of every duration: 1.0 is CometBFT's timing, 0.2 five times faster")
    up.add_argument("--backend", default="auto", help="auto, local or docker (default: auto)")
    up.add_argument("--prometheus", action=argparse.BooleanOptionalAction, default=None,
                    help="start a real Prometheus on 127.0.0.1 with the lab's alert rules "
                         "(default: when the prometheus binary is installed)")
    lab_commands.add_parser("down", help="stop every localnet process")
    status = lab_commands.add_parser("status", help="list the targets like `docker ps`")
    status.add_argument("--json", action="store_true", help="print the endpoints as JSON for scripts")

    from .chaos.cli import add_chaos_parser, add_cleanup_parser

    add_chaos_parser(commands)
    add_cleanup_parser(commands)

    report = commands.add_parser("report", help="write the debrief postmortem of every incident in the lab home")
    report.add_argument("--out", help="file to write (default: HOME/postmortems/simulation-summary.md)")

    run = commands.add_parser("run", help="execute a simulation notebook headless with papermill")
    run.add_argument("notebook", help="scenario id (like node-down) or a notebook path")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="notebook parameter, like -p seed 3 (repeatable)")
    run.add_argument("--keep-up", action="store_true", help="leave the localnet running after the run")
    run.add_argument("--timeout", type=float, default=900.0, help="seconds one cell may run (default 900)")
    _add_grade_parser(commands)
    return parser


def _add_grade_parser(commands) -> None:
    from .grading.batch import DEFAULT_TIME_SCALE, DEFAULT_TIMEOUT

    grade = commands.add_parser("grade", help="grade a folder of learners' decision files with papermill")
    grade.add_argument("submissions", metavar="SUBMISSIONS_DIR", help="folder of decision files (*.json)")
    grade.add_argument("--out", required=True, help="output folder: gradebook, feedback, notebooks, summary")
    grade.add_argument("--workers", type=int, default=1, help="notebooks run at once, each on its own lab (default 1)")
    grade.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                       help=f"seconds one notebook may run before it is stopped (default {DEFAULT_TIMEOUT:g})")
    grade.add_argument("--time-scale", type=float, default=DEFAULT_TIME_SCALE,
                       help=f"time scale of the graded labs (default {DEFAULT_TIME_SCALE:g}, five times faster)")
    grade.add_argument("--no-progress", action="store_true", help="do not show the progress bar")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from .errors import IncidentLabError

    try:
        if args.command == "lab":
            return _lab_command(args)
        if args.command == "run":
            return _run_command(args)
        if args.command == "chaos":
            from .chaos.cli import run_chaos

            return run_chaos(args)
        if args.command == "report":
            return _report_command(args)
        if args.command == "grade":
            return _grade_command(args)
        if args.command == "cleanup":
            from .chaos.cli import run_cleanup

            return run_cleanup(args)
    except IncidentLabError as exc:
        print(f"incidentlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("incidentlab: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


def _lab_command(args: argparse.Namespace) -> int:
    from .lab import Lab

    if args.lab_command == "up":
        lab = Lab.connect(args.backend, home=args.home, validators=args.validators, time_scale=args.time_scale)
        print(lab.targets().to_string(index=False))
        from .monitoring.prometheus_server import prometheus_binary

        if args.prometheus or (args.prometheus is None and prometheus_binary()):
            print(f"Prometheus: {lab.monitor.start_prometheus().url}")
        return 0
    # status is read-only: it must not undo faults as a side effect.
    lab = Lab.connect(home=args.home, start=False, reconcile=args.lab_command == "down")
    if args.lab_command == "down":
        lab.down()
        print(f"localnet in {lab.config.home} is down")
        return 0
    if args.json:
        print(json.dumps(lab.status(), indent=2))
        return 0
    targets = lab.targets()
    if targets.empty:
        print(f"no localnet in {lab.config.home}; start one with `incidentlab lab up`")
        return 0
    print(targets.to_string(index=False))
    return 0


def _run_command(args: argparse.Namespace) -> int:
    from .runner import run_notebook

    result = run_notebook(args.notebook, dict(args.parameter), home=args.home, keep_up=args.keep_up,
                          cell_timeout=args.timeout)
    print(f"executed notebook: {result.output_path}")
    if result.report_path:
        print(f"incident report:   {result.report_path}")
        kinds = {event["kind"] for event in result.record.get("timeline", [])}
        verdict = "yes" if "recovery_verified" in kinds else "NO: the probes did not verify a recovery"
        print(f"recovered:         {verdict}")
    if result.error:
        print(f"incidentlab: the notebook failed: {result.error}", file=sys.stderr)
        return 1
    return 0


def _grade_command(args: argparse.Namespace) -> int:
    import signal

    from .grading import grade

    # SIGTERM ends the batch like Ctrl-C: running notebooks are stopped and their labs cleaned up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = grade(args.submissions, args.out, workers=args.workers, timeout=args.timeout,
                   time_scale=args.time_scale, progress=not args.no_progress)
    counts = ", ".join(f"{count} {status}" for status, count in sorted(result.counts().items()))
    print(f"graded {result.graded_now} notebooks, skipped {result.skipped} already graded; rows: {counts}")
    print(f"gradebook: {result.gradebook}")
    print(f"summary:   {result.summary}")
    return 0


def _report_command(args: argparse.Namespace) -> int:
    from .config import default_home
    from .incident.debrief import Debrief

    home = args.home or default_home()
    debrief = Debrief(home)
    path = debrief.save(args.out)
    print(debrief.metrics_review().to_string() if debrief.incidents else f"no incident record in {home}")
    print(f"postmortem: {path}")
    return 0

"""``incidentlab chaos ...`` and ``incidentlab cleanup``: the lab document's chaos tools, journaled."""

from __future__ import annotations

import argparse
import re
import sys

__all__ = ["add_chaos_parser", "add_cleanup_parser", "run_chaos", "run_cleanup", "parse_duration"]

from ..errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")


def parse_duration(text: str, *, default_unit: str = "s") -> float:
    """Parse ``100ms``, ``2s``, ``1.5m`` or a bare number (in ``default_unit``) into seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}; write it like 100ms, 2s or 1m")
    value, unit = float(match.group(1)), match.group(2) or default_unit
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def add_chaos_parser(commands) -> None:
    chaos = commands.add_parser("chaos", help="inject and undo faults on the lab's targets (journaled)")
    chaos.add_argument("--dry-run", action="store_true", help="show what would be done, change nothing")
    actions = chaos.add_subparsers(dest="chaos_command", metavar="ACTION", required=True)
    actions.add_parser("list", help="list the targets like `docker ps --filter name=virtengine`")
    for name, text in (("kill", "stop a target like `docker stop` (the lab document's kill)"),
                       ("restart", "start a stopped target again and close its stop faults"),
                       ("pause", "freeze a target like `docker pause`"),
                       ("unpause", "resume a paused target and close its pause faults")):
        actions.add_parser(name, help=text).add_argument("target", help="target name, like virtengine-node-1")
    cycle = actions.add_parser("pause-cycle", help="pause and unpause a target in a loop, in the foreground")
    cycle.add_argument("target")
    cycle.add_argument("--cycles", type=int, default=5, help="number of cycles (default 5)")
    cycle.add_argument("--paused", type=parse_duration, default=2.0, help="time paused per cycle (default 2s)")
    cycle.add_argument("--running", type=parse_duration, default=3.0, help="time running per cycle (default 3s)")
    latency = actions.add_parser("latency", help="add network latency in front of a target")
    latency.add_argument("target")
    latency.add_argument("delay", nargs="?", type=lambda t: parse_duration(t, default_unit="ms"), default=0.1,
                         help="added delay, like 100ms (default 100ms)")
    latency.add_argument("--jitter", type=lambda t: parse_duration(t, default_unit="ms"), default=0.0,
                         help="random variation of the delay, like 10ms")
    actions.add_parser("latency-remove", help="remove the latency in front of a target").add_argument("target")
    stress = actions.add_parser("cpu-stress", help="burn CPU beside a target for a while")
    stress.add_argument("target")
    stress.add_argument("duration", nargs="?", type=parse_duration, default=60.0, help="how long, like 60s (default 60s)")
    actions.add_parser("halt", help="undo every open fault now")
    actions.add_parser("journal", help="list every fault, open or reverted")


def add_cleanup_parser(commands) -> None:
    commands.add_parser("cleanup", help="undo every fault still open in the journal (after a crash, too)")


def run_cleanup(args: argparse.Namespace) -> int:
    from ..lab import Lab

    lab = Lab.connect(home=args.home, start=False, reconcile=False)
    acted = lab.reconcile(force=True)
    for entry in acted:
        print(f"{entry['id']:<40} {entry.get('target', ''):<20} {entry['state']:<14} {entry['note']}")
    print(f"{len(acted)} open fault(s) undone; journal in {lab.config.home / 'chaos'}")
    return 0 if all(entry["state"] == "reverted" for entry in acted) else 1


def run_chaos(args: argparse.Namespace) -> int:
    from ..chaos.cleanup import revert_matching
    from ..lab import Lab

    command = args.chaos_command
    # Listing commands are read-only: they must not undo faults as a side effect.
    lab = Lab.connect(home=args.home, start=False, reconcile=command not in ("list", "journal"))
    if command == "list":
        print(lab.targets().to_string(index=False))
        return 0
    if command == "journal":
        journal = lab.journal()
        print(journal.to_string(index=False) if not journal.empty else "the fault journal is empty")
        return 0
    if command == "halt":
        before = set(lab.journal().query("state != 'reverted'")["id"])
        journal = lab.halt()
        undone = journal[journal["id"].isin(before)]
        print(undone.to_string(index=False) if not undone.empty else "no open fault: nothing to undo")
        return 0
    if command in ("restart", "unpause", "latency-remove"):
        kinds = {"restart": ("stop", "kill", "restart"), "unpause": ("pause", "pause-cycle"),
                 "latency-remove": ("latency",)}[command]
        lab.backend.inspect(args.target)  # TargetNotFound for an unknown name
        if args.dry_run:
            print(f"would close the open {'/'.join(kinds)} faults on {args.target} and undo them")
            return 0
        acted = revert_matching(lab.config.home, lab.backend, target=args.target, kinds=kinds,
                                reason=f"incidentlab chaos {command}")
        if not acted and command == "restart":
            lab.backend.start(args.target)
        elif not acted and command == "unpause":
            lab.backend.unpause(args.target)
        print(f"{command}: {args.target} is {lab.backend.inspect(args.target)['Status']}")
        return 0
    return _inject(lab, args)


def _inject(lab, args: argparse.Namespace) -> int:
    options = {"dry_run": args.dry_run}
    # Durations typed on the command line are wall-clock time; the fault classes take durations
    # before time scaling, so divide by the lab's time scale.
    scale = lab.config.time_scale
    if args.chaos_command == "cpu-stress":
        args.duration = _unscaled("duration", args.duration, scale)
    if args.chaos_command == "pause-cycle":
        args.paused, args.running = _unscaled("--paused", args.paused, scale), _unscaled("--running", args.running, scale)
    if args.chaos_command == "latency" and not 0.001 <= args.delay <= 60:
        raise ConfigError(f"latency {args.delay * 1000:.15g}ms is out of range; give 1ms to 60s, like 100ms")
    if args.chaos_command == "kill":
        fault = lab.fault("stop", args.target, detached=True, **options)
    elif args.chaos_command == "pause":
        fault = lab.fault("pause", args.target, detached=True, **options)
    elif args.chaos_command == "cpu-stress":
        fault = lab.fault("cpu-stress", args.target, duration=args.duration, detached=True, **options)
    elif args.chaos_command == "latency":
        fault = lab.fault("latency", args.target, delay=args.delay, jitter=args.jitter, detached=True, **options)
    else:
        fault = lab.fault("pause-cycle", args.target, cycles=args.cycles, paused=args.paused,
                          running=args.running, **options)
    if args.dry_run:
        print("\n".join(f"would {step}" for step in fault.plan()))
        return 0
    fault.inject()
    if args.chaos_command == "pause-cycle":
        # In the foreground like the lab document's loop: Ctrl-C or SIGTERM reverts at once.
        try:
            fault.wait()
        finally:
            fault.revert()
    print(f"{fault.id}: {fault.kind} on {fault.target} is {fault.entry['state']}")
    return 0 if fault.entry["state"] in ("active", "reverted") else 1


def _unscaled(name: str, seconds: float, scale: float) -> float:
    """Turn wall-clock ``seconds`` typed by the user into seconds before time scaling.

    Raises ConfigError naming the value as typed, so the message never shows a scaled number.
    """
    from .faults import MAX_DURATION

    longest = MAX_DURATION * scale
    if not 0 < seconds <= longest:
        raise ConfigError(f"{name} {seconds:.15g}s is out of range; give more than 0s and at most {longest:g}s "
                          f"(24 hours of lab time at this lab's time_scale {scale:g})")
    return seconds / scale


if __name__ == "__main__":
    sys.exit("use the incidentlab command: incidentlab chaos --help")

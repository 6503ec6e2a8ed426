"""Shim of one localnet service: a small parent process like containerd-shim (Linux, standard library only).

It runs the service as its child, copies every output line into a log file with a timestamp,
and keeps a JSON state file shaped like the State of `docker inspect`.

Usage: ``python -m incidentlab.localnet.shim --state STATE.json --log LOG --name NAME -- CMD ...``
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .._fileio import write_json_atomic

__all__ = ["ZERO_TIME", "format_timestamp", "exit_code_of", "main"]

#: Docker's value of FinishedAt (and StartedAt) while it has no such time.
ZERO_TIME = "0001-01-01T00:00:00Z"
#: Exit code that Docker reports when the command cannot be executed (missing or not executable).
EXEC_FAILED_EXIT_CODE = 127
#: Maximum seconds the shim waits for the rest of the output after its child exited.
DRAIN_TIMEOUT = 2.0
#: Signals the shim ignores, so that Ctrl-C, a closed terminal or a stray SIGTERM cannot kill it.
SHIM_IGNORED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: prctl option that sends a signal to the calling process when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def format_timestamp(ns: int | None = None) -> str:
    """Format a time as RFC 3339 in UTC with nanoseconds and ``Z``, like Docker's log timestamps.

    Takes nanoseconds since the epoch (``time.time_ns()`` when None) and returns a string
    such as ``2024-05-01T12:00:00.123456789Z``.
    """
    if ns is None:
        ns = time.time_ns()
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


def exit_code_of(returncode: int) -> int:
    """Convert a ``subprocess`` return code to Docker's exit code.

    A child killed by signal N has return code -N and gets 128 + N, so SIGKILL gives 137
    and SIGTERM 143. Other codes are returned unchanged.
    """
    return 128 - returncode if returncode < 0 else returncode


def main(argv: list[str] | None = None) -> int:
    """Run the command given after ``--`` under the shim until it exits.

    Takes the command line (``sys.argv[1:]`` when None) and returns Docker's exit code of the
    child, or 127 when the command could not be executed. The state file records the same code.
    """
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    _detach()
    state = _initial_state(args)

    with open(args.log, "ab", buffering=0) as log:
        # Spawn the child; a missing or non-executable command is recorded like Docker's 127.
        state["started_at"] = format_timestamp()
        try:
            child = _spawn(args.command)
        except OSError as exc:
            state.update(
                status="exited",
                finished_at=format_timestamp(),
                exit_code=EXEC_FAILED_EXIT_CODE,
                error=f"cannot execute {args.command[0]!r}: {exc.strerror or exc}",
            )
            _write_state(args.state, state)
            return EXEC_FAILED_EXIT_CODE
        state.update(status="running", pid=child.pid)
        _write_state(args.state, state)

        # Copy the output in a thread, so that a grandchild holding the pipe open cannot
        # keep the shim from recording the exit.
        reader = threading.Thread(target=_copy_lines, args=(child.stdout, log), daemon=True)
        reader.start()
        returncode = child.wait()
        reader.join(DRAIN_TIMEOUT)

    state.update(status="exited", finished_at=format_timestamp(), exit_code=exit_code_of(returncode))
    _write_state(args.state, state)
    return state["exit_code"]


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m incidentlab.localnet.shim",
        description="Run one localnet service as a child, log its output and record its state.",
        usage="%(prog)s --state STATE.json --log LOG --name NAME -- CMD ...",
    )
    parser.add_argument("--state", required=True, help="path of the JSON state file to keep up to date")
    parser.add_argument("--log", required=True, help="path of the log file that timestamped output lines are appended to")
    parser.add_argument("--name", required=True, help="service name recorded in the state file")
    if "--" not in argv:
        parser.error("missing '--' before the command to run, for example: -- python -m incidentlab.localnet.validator ...")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    args.command = argv[split + 1 :]
    if not args.command:
        parser.error("missing the command after '--'; give the program and its arguments")
    return args


def _detach() -> None:
    # The supervisor starts the shim in a new session already. When a shell runs the shim
    # directly, it is a process group leader and setsid fails with EPERM. The child gets a
    # session of its own in any case (see _spawn), so terminal signals never reach it.
    if os.getsid(0) != os.getpid():
        try:
            os.setsid()
        except PermissionError:
            pass
    for signum in SHIM_IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _initial_state(args: argparse.Namespace) -> dict:
    return {
        "name": args.name,
        "pid": 0,
        "shim_pid": os.getpid(),
        "shim_command": _own_cmdline(),
        "status": "created",
        "started_at": ZERO_TIME,
        "finished_at": ZERO_TIME,
        "exit_code": 0,
        "oom_killed": False,
        "error": "",
        "command": list(args.command),
        "log": str(Path(args.log).resolve()),
    }


def _spawn(command: list[str]) -> subprocess.Popen:
    shim_pid = os.getpid()
    libc = _load_libc()

    def prepare_child() -> None:
        # Ignored signals stay ignored across exec, so the child gets the defaults back.
        for signum in SHIM_IGNORED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        # Die with the shim, because without it the output is lost and the exit goes unrecorded.
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != shim_pid:
            os._exit(EXEC_FAILED_EXIT_CODE)

    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=prepare_child,
        close_fds=True,
    )


def _load_libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _copy_lines(stream, log) -> None:
    for line in iter(stream.readline, b""):
        if not line.endswith(b"\n"):
            line += b"\n"
        # One write per line on an O_APPEND file, so a reader never sees half a line.
        log.write(format_timestamp().encode("ascii") + b" " + line)
    stream.close()


def _write_state(path: str, state: dict) -> None:
    write_json_atomic(path, state)


def _own_cmdline() -> list[str]:
    try:
        with open(f"/proc/{os.getpid()}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return list(sys.orig_argv)
    return [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0")[:-1]]


if __name__ == "__main__":
    sys.exit(main())

"""Start, stop and watch the embedded localnet's processes on 127.0.0.1 (Linux, standard library only).

Each validator, the API gateway and the client load run under their own shim
(incidentlab.localnet.shim) in a new session, so the localnet outlives the Python process that
started it. Process state comes from /proc.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from .._fileio import read_json, write_json_atomic
from ..config import LabConfig
from ..errors import LocalnetError, TargetNotFound, TargetStateError
from . import portclaims
from .network import Network, ServiceSpec, ValidatorSpec, create_network, load_network
from .services import endpoint_text, is_ready, kind_of, ready_check_text, service_command, status_entry
from .shim import ZERO_TIME, format_timestamp

__all__ = [
    "port_conflict","Localnet", "validator_command", "process_state", "tail_lines", "wait_until", "ACTIVE_STATUSES"]

logger = logging.getLogger(__name__)

VALIDATOR_MODULE = "incidentlab.localnet.validator"
SHIM_MODULE = "incidentlab.localnet.shim"
#: Statuses of a service whose process exists.
ACTIVE_STATUSES = ("running", "paused")
#: Seconds between two looks at a state file or a /health endpoint.
POLL_INTERVAL = 0.05
#: Seconds a validator has to respond to GET /health after start (the gateway to GET /metrics).
#: Start-up does not get faster with time_scale, so only part of the budget is scaled, up to
#: MAX_HEALTH_TIMEOUT.
HEALTH_TIMEOUT_BASE = 10.0
HEALTH_TIMEOUT_SCALED = 20.0
MAX_HEALTH_TIMEOUT = 30.0
PORT_RELEASE_TIMEOUT = 1.0
#: Tries to start a localnet created by the same call, each with newly picked ports.
FRESH_PORT_ATTEMPTS = 3
#: Grace period of `docker stop` in seconds, before time scaling.
DEFAULT_STOP_TIMEOUT = 10.0
#: Minimum default grace period of down() in seconds: a validator's shutdown takes about a
#: second whatever the time_scale, and down() should not turn it into a SIGKILL.
MIN_DOWN_GRACE = 5.0
#: Maximum seconds for a shim to record its child's pid, or its exit after a SIGKILL.
SHIM_RECORD_TIMEOUT = 10.0
LOCK_TIMEOUT = 60.0
LOG_LINES_IN_ERRORS = 15
#: Exit code reported for a validator whose shim died, because then no process observed its exit status.
LOST_SHIM_EXIT_CODE = 137

# Shims started by this Python process, kept so that they are reaped once they exit.
_SPAWNED_SHIMS: dict[int, subprocess.Popen] = {}


def validator_command(spec: ValidatorSpec, network_path: str | os.PathLike) -> list[str]:
    """Return the command line of the real validator process for ``spec``."""
    return [sys.executable, "-m", VALIDATOR_MODULE, "--network", str(network_path), "--name", spec.name]


class Localnet:
    """The embedded localnet of one lab home: network file, shims, validators and other services.

    ``command_factory(spec)`` returns the command of one validator; the default runs
    ``python -m incidentlab.localnet.validator``. Tests pass a stand-in with the same interface.
    The gateway and the client always run their own modules. ``with_services`` gives a new
    network file the gateway and the client; an existing file keeps what it has.
    Timeouts are in seconds before scaling and are multiplied by ``config.time_scale``.
    """

    def __init__(self, config: LabConfig, *, command_factory: Callable[[ValidatorSpec], list[str]] | None = None,
                 with_services: bool = True):
        self.config = config
        self.command_factory = command_factory or (lambda spec: validator_command(spec, self.network_path))
        self.with_services = with_services

    @property
    def network_path(self) -> Path:
        return self.config.localnet_dir / "network.json"

    @property
    def run_dir(self) -> Path:
        return self.config.localnet_dir / "run"

    def log_path(self, name: str) -> Path:
        return self.config.logs_dir / f"{name}.log"

    def network(self) -> Network | None:
        """Return the localnet's network file, or None when up() never created one."""
        if not self.network_path.exists():
            return None
        return load_network(self.network_path)

    def up(self) -> list[dict]:
        """Create the localnet when needed, start every validator and wait for /health, then the other services.

        Returns services(). When a validator is already running or paused, the localnet
        counts as up and nothing is started. When a process does not become ready,
        everything this call started is stopped again. Then LocalnetError is raised with
        the process's name, its port and its last log lines.
        """
        with self._locked("up"):
            fresh = self.network() is None
            for attempt in range(1, FRESH_PORT_ATTEMPTS + 1):
                network = self._ensure_network()
                if any(self.state(spec.name)["status"] in ACTIVE_STATUSES for spec in network.validators):
                    logger.info("localnet in %s is already up", self.config.localnet_dir)
                    return self.services()
                try:
                    self._start_all(network, check_timeout=0 if fresh else PORT_RELEASE_TIMEOUT)
                except LocalnetError as exc:
                    # Another lab may take a port between our pick and our bind; a network
                    # created by this very call can simply pick new ports.
                    if not (fresh and attempt < FRESH_PORT_ATTEMPTS and port_conflict(exc)):
                        raise
                    logger.warning("new localnet hit a busy port (%s); picking new ports, attempt %d", exc, attempt + 1)
                    portclaims.release(network.ports(), self.network_path)
                    self.network_path.unlink()
                    continue
                logger.info("localnet up: %d validators, chain_id=%s", len(network.validators), network.chain_id)
                break
        return self.services()

    def _start_all(self, network: Network, check_timeout: float) -> None:
        started: list[str] = []
        try:
            for spec in network.specs:
                _check_ports_free(spec, self.network_path, check_timeout)
            # The gateway and the client start once the validators respond, so that the client's
            # first requests are not counted as errors.
            for group in (network.validators, network.services):
                for spec in group:
                    started.append(spec.name)
                    self._spawn(spec, self._command(spec))
                self._wait_healthy(group)
        except BaseException:
            self._stop_many(started, grace=0)
            raise

    def down(self, timeout: float | None = None) -> list[dict]:
        """Stop every process of the localnet: SIGTERM, then SIGKILL after the grace period. Idempotent.

        Takes the grace period in seconds before time scaling. The default is 10 s like
        `docker stop`, scaled but never under 5 s. Returns services(). Raises LocalnetError
        when a process still runs after SIGKILL.
        """
        with self._locked("down"):
            network = self.network()
            if network is None:
                return []
            grace = self._grace(timeout) if timeout is not None else max(self._grace(None), MIN_DOWN_GRACE)
            self._stop_many([spec.name for spec in network.specs], grace)
            logger.info("localnet down in %s", self.config.localnet_dir)
        return self.services()

    def is_up(self) -> bool:
        """Return True when at least one process of the localnet is running or paused."""
        return any(service["status"] in ACTIVE_STATUSES for service in self.services())

    def services(self) -> list[dict]:
        """Return one dict per process, validators first, shaped for `incidentlab lab status --json`.

        See services.status_entry() for the keys of each kind.
        """
        network = self.network()
        if network is None:
            return []
        services = []
        for spec in network.specs:
            state = self.state(spec.name)
            active = state["status"] in ACTIVE_STATUSES
            services.append(status_entry(
                spec, status=state["status"], pid=state["pid"] if active else 0, started_at=state["started_at"],
                finished_at=state["finished_at"], exit_code=state["exit_code"],
            ))
        return services

    def state(self, name: str) -> dict:
        """Return the recorded state of one process (validator or other service), checked against the live process.

        The dict has the shim's fields (name, pid, shim_pid, status, started_at, finished_at,
        exit_code, oom_killed, error, command, log) plus ``ports``. Status is created, running,
        paused (the process is stopped by a signal: /proc state T or t) or exited. A process
        whose shim died is reported exited with code 137 once it is gone, and this
        finding is written back to the state file. Raises TargetNotFound for an unknown name.
        """
        spec = self._spec(name)
        _reap_shims()
        path = self.run_dir / f"{name}.json"
        state = self._read_state(path)
        if state is None:
            return _created_state(spec, self.log_path(name))
        state["ports"] = dict(spec.ports)
        if state["status"] != "running":
            return state

        shim_alive = _is_our_process(state["shim_pid"], state.get("shim_command", []))
        if _is_our_process(state["pid"], state["command"]):
            if not shim_alive:
                state["error"] = f"shim pid {state['shim_pid']} was lost: output is no longer logged and the exit will not be recorded"
            state["status"] = "paused" if process_state(state["pid"]) in ("T", "t") else "running"
            return state
        # The child is gone. A live shim is about to record the exit, and a shim that has
        # just exited normally has recorded it already.
        recorded = lambda: (self._read_state(path) or {}).get("status") == "exited"  # noqa: E731
        if wait_until(recorded, SHIM_RECORD_TIMEOUT if shim_alive else 0):
            return self.state(name)

        # The shim died before the child, so no process observed the exit status: record that once.
        state.update(
            status="exited",
            finished_at=format_timestamp(),
            exit_code=LOST_SHIM_EXIT_CODE,
            error=f"shim pid {state['shim_pid']} was lost and {kind_of(spec)} pid {state['pid']} is gone; "
            "its exit status is unknown and reported as 137",
        )
        write_json_atomic(path, {k: v for k, v in state.items() if k != "ports"})
        logger.warning("lost shim of %s: shim_pid=%s pid=%s", name, state["shim_pid"], state["pid"])
        return state

    def start_service(self, name: str) -> dict:
        """Start one stopped process (validator or other service) again with the same command, data and ports.

        Returns its state. A running or paused process is left as it is. Raises
        LocalnetError when it does not become ready (it is stopped again first) and
        TargetNotFound for an unknown name.
        """
        with self._locked(f"start {name}"):
            state = self.state(name)
            if state["status"] in ACTIVE_STATUSES:
                return state
            spec = self._spec(name)
            _check_ports_free(spec, self.network_path)
            command = state.get("command") or self._command(spec)
            try:
                self._spawn(spec, command)
                self._wait_healthy([spec])
            except BaseException:
                self._stop_many([name], grace=0)
                raise
        return self.state(name)

    def stop_service(self, name: str, timeout: float | None = None) -> dict:
        """Stop one process like `docker stop`: SIGTERM, then SIGKILL after ``timeout`` seconds.

        The timeout is in seconds before time scaling (default 10). Returns the new state;
        a process that is not running is left as it is.
        """
        with self._locked(f"stop {name}"):
            self._stop_many([name], self._grace(timeout))
        return self.state(name)

    def signal_service(self, name: str, signum: int) -> dict:
        """Send ``signum`` to a running or paused process after checking that its pid is still ours.

        Returns the state read before the signal. Raises TargetStateError when the process
        is not running and TargetNotFound for an unknown name.
        """
        state = self.state(name)
        if not self._send(state, signum):
            raise TargetStateError(
                name, state["status"],
                f"target {name} is not running (status {state['status']}), so it cannot get "
                f"{signal.Signals(signum).name}; start it first",
            )
        return state

    # -- private helpers ----------------------------------------------------------------

    def _spec(self, name: str) -> ValidatorSpec | ServiceSpec:
        network = self.network()
        specs = {spec.name: spec for spec in network.specs} if network else {}
        if name not in specs:
            raise TargetNotFound(name, list(specs))
        return specs[name]

    def _command(self, spec: ValidatorSpec | ServiceSpec) -> list[str]:
        if kind_of(spec) == "validator":
            return self.command_factory(spec)
        return service_command(spec, self.network_path)

    def _ensure_network(self) -> Network:
        self.config.ensure_home()
        network = self.network()
        if network is None:
            return create_network(
                self.config.localnet_dir,
                chain_id=self.config.chain_id,
                validators=self.config.validators,
                time_scale=self.config.time_scale,
                classic_ports=self.config.classic_ports,
                with_services=self.with_services,
            )
        recorded = (len(network.validators), network.chain_id, network.time_scale)
        configured = (self.config.validators, self.config.chain_id, self.config.time_scale)
        if recorded != configured:
            raise LocalnetError(
                f"{self.network_path} has validators={recorded[0]}, chain_id={recorded[1]!r}, "
                f"time_scale={recorded[2]}, but the configuration has validators={configured[0]}, "
                f"chain_id={configured[1]!r}, time_scale={configured[2]}. Use the same settings, or run "
                f"down() and delete {self.config.localnet_dir} to create a new localnet."
            )
        return network

    def _read_state(self, path: Path) -> dict | None:
        try:
            return read_json(path)
        except ValueError as exc:
            raise LocalnetError(f"state file {path} is not valid JSON ({exc}); stop the localnet and delete the file") from exc

    def _spawn(self, spec: ValidatorSpec | ServiceSpec, command: list[str]) -> dict:
        state_path = self.run_dir / f"{spec.name}.json"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.logs_dir.mkdir(parents=True, exist_ok=True)
        state_path.unlink(missing_ok=True)
        shim = [sys.executable, "-m", SHIM_MODULE, "--state", str(state_path),
                "--log", str(self.log_path(spec.name)), "--name", spec.name, "--", *command]

        # The shim's own errors (never the service's output) go to NAME.shim.err.
        with open(self.run_dir / f"{spec.name}.shim.err", "ab") as shim_errors:
            process = subprocess.Popen(
                shim, stdin=subprocess.DEVNULL, stdout=shim_errors, stderr=shim_errors,
                cwd=self.config.localnet_dir, env=_child_environment(), start_new_session=True, close_fds=True,
            )
        _SPAWNED_SHIMS[process.pid] = process

        wait_until(lambda: self._read_state(state_path) or process.poll() is not None, SHIM_RECORD_TIMEOUT)
        state = self._read_state(state_path)
        if state is None:
            errors_path = self.run_dir / f"{spec.name}.shim.err"
            outcome = "is still running" if process.poll() is None else f"exited with code {process.returncode}"
            errors = "\n".join(tail_lines(errors_path, LOG_LINES_IN_ERRORS)) or "(empty)"
            raise LocalnetError(
                f"the shim of {spec.name} (pid {process.pid}) {outcome} but recorded no state in "
                f"{state_path} within {SHIM_RECORD_TIMEOUT:.0f} s. Last lines of {errors_path}:\n{errors}"
            )
        logger.info("started %s pid=%d shim_pid=%d %s", spec.name, state["pid"], process.pid, endpoint_text(spec))
        return state

    def _wait_healthy(self, specs) -> None:
        timeout = min(MAX_HEALTH_TIMEOUT, HEALTH_TIMEOUT_BASE + HEALTH_TIMEOUT_SCALED * self.config.time_scale)
        deadline = time.monotonic() + timeout
        pending = list(specs)
        while pending:
            for spec in list(pending):
                state = self.state(spec.name)
                if state["status"] == "exited":
                    raise self._start_error(spec, state, f"exited with code {state['exit_code']} before it was ready")
                if is_ready(spec, state["pid"]):
                    pending.remove(spec)
            if pending and time.monotonic() > deadline:
                spec = pending[0]
                raise self._start_error(spec, self.state(spec.name), f"was not ready within {timeout:.1f} s")
            if pending:
                time.sleep(POLL_INTERVAL)

    def _start_error(self, spec: ValidatorSpec | ServiceSpec, state: dict, failure: str) -> LocalnetError:
        log_path = self.log_path(spec.name)
        lines = "\n".join(tail_lines(log_path, LOG_LINES_IN_ERRORS)) or "(empty)"
        error = f" ({state['error']})" if state.get("error") else ""
        return LocalnetError(
            f"{kind_of(spec)} {spec.name} (pid {state['pid']}) {failure}{ready_check_text(spec)}{error}. "
            f"Last lines of {log_path}:\n{lines}\n"
            "The log above shows why it failed. If another program uses the port, stop that program."
        )

    def _grace(self, timeout: float | None) -> float:
        return (DEFAULT_STOP_TIMEOUT if timeout is None else timeout) * self.config.time_scale

    def _stop_many(self, names: list[str], grace: float) -> None:
        states = {name: self.state(name) for name in names}
        running = [name for name, state in states.items() if state["status"] in ACTIVE_STATUSES]

        # A process stopped by SIGSTOP cannot act on SIGTERM until it gets SIGCONT.
        for name in running:
            if states[name]["status"] == "paused":
                self._send(states[name], signal.SIGCONT)
            self._send(states[name], signal.SIGTERM)
            logger.info("sent SIGTERM to %s pid=%d", name, states[name]["pid"])
        exited = lambda: all(self.state(name)["status"] == "exited" for name in running)  # noqa: E731
        if wait_until(exited, grace):
            return

        for name in running:
            state = self.state(name)
            if self._send(state, signal.SIGKILL):
                logger.info("sent SIGKILL to %s pid=%d after %.1f s", name, state["pid"], grace)
        if not wait_until(exited, SHIM_RECORD_TIMEOUT):
            left = [name for name in running if self.state(name)["status"] != "exited"]
            raise LocalnetError(
                f"processes still running {SHIM_RECORD_TIMEOUT:.0f} s after SIGKILL: {', '.join(left)}; "
                f"look for them with `ps` and read their logs in {self.config.logs_dir}"
            )

    def _send(self, state: dict, signum: int) -> bool:
        # A pid is signalled only while its command line is still the recorded one, so a
        # reused pid is never hit.
        if state["status"] not in ACTIVE_STATUSES or not _is_our_process(state["pid"], state["command"]):
            return False
        try:
            os.kill(state["pid"], signum)
        except ProcessLookupError:
            return False
        return True

    @contextlib.contextmanager
    def _locked(self, action: str):
        # flock serialises up, down, start and stop of one lab home across processes. Public
        # methods take it once and call only private helpers inside, because a second flock
        # on a new file descriptor would wait for the first.
        path = self.config.localnet_dir / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+", encoding="utf-8") as handle:
            _acquire(handle, path, action)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def process_state(pid: int) -> str | None:
    """Return the state letter of a process from /proc/PID/stat (R, S, D, T, t, Z, ...), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name in brackets may contain spaces and ')', so the state follows the last ')'.
    return raw[raw.rindex(")") + 2]


def tail_lines(path: str | os.PathLike, count: int | None) -> list[str]:
    """Return the last ``count`` lines of a text file without their line ends (all lines when None).

    The file is read from the end in blocks, so the cost grows with the lines returned, not
    with the file size. A missing file gives [].
    """
    block = 65536
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return []
    with handle:
        if count is None:
            data = handle.read()
        else:
            end = handle.seek(0, os.SEEK_END)
            data, position = b"", end
            while position > 0 and data.count(b"\n") <= count:
                position = max(0, position - block)
                handle.seek(position)
                data = handle.read(end - position)
    lines = data.decode("utf-8", "replace").splitlines()
    if count is None:
        return lines
    return lines[-count:] if count > 0 else []


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Call ``condition`` every 50 ms until it returns true or ``timeout`` seconds pass.

    Returns whether it became true; the condition is always called at least once.
    """
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)


def _is_our_process(pid: int, command: list[str]) -> bool:
    if not pid or not command:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # A zombie has an empty command line, so it never matches.
    return [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0")[:-1]] == list(command)


def _created_state(spec: ValidatorSpec | ServiceSpec, log_path: Path) -> dict:
    return {
        "name": spec.name, "pid": 0, "shim_pid": 0, "status": "created",
        "started_at": ZERO_TIME, "finished_at": ZERO_TIME, "exit_code": 0, "oom_killed": False,
        "error": "", "command": [], "log": str(log_path), "ports": dict(spec.ports),
    }


def port_conflict(error: Exception) -> bool:
    """Return True when ``error`` says a localnet port was already taken."""
    text = str(error)
    return "is in use" in text or "Address already in use" in text


def _check_ports_free(spec: ValidatorSpec | ServiceSpec, network_path: Path, timeout: float | None = None) -> None:
    # A process that was just killed may hold its sockets for a moment after /proc stops
    # showing its command line, so a busy port gets a short time to be released.
    if wait_until(lambda: _busy_port(spec) is None, PORT_RELEASE_TIMEOUT if timeout is None else timeout):
        return
    kind, port, reason = _busy_port(spec) or ("", 0, "")
    raise LocalnetError(
        f"port {port} ({kind} of {spec.name}) on 127.0.0.1 is in use: {reason}. "
        f"Stop the program that uses it (`ss -ltnp 'sport = :{port}'` shows it), or run down() "
        f"and delete {network_path} so that up() picks free ports."
    )


def _busy_port(spec: ValidatorSpec | ServiceSpec) -> tuple[str, int, str] | None:
    for kind, port in spec.ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                return kind, port, exc.strerror or str(exc)
    return None


def _child_environment() -> dict:
    # The package may not be installed: let `python -m incidentlab...` find it from any cwd.
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _acquire(handle, path: Path, action: str) -> None:
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise LocalnetError(
                    f"cannot {action}: timed out after {LOCK_TIMEOUT:.0f} s waiting for the lock {path}, "
                    f"held by another command ({holder}); wait for it to finish or stop it"
                ) from None
            time.sleep(POLL_INTERVAL)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}: {action}\n")
    handle.flush()


def _reap_shims() -> None:
    for pid, process in list(_SPAWNED_SHIMS.items()):
        if process.poll() is not None:
            del _SPAWNED_SHIMS[pid]

"""Local backend: the targets are the embedded localnet's processes on this machine (validators, gateway, client).

Actions are signals to local processes (SIGSTOP, SIGCONT, SIGTERM, SIGKILL) sent through the
localnet supervisor, and their rules and results follow the Docker engine's.
"""

from __future__ import annotations

import datetime as _dt
import logging
import signal as _signal
from typing import TYPE_CHECKING

from ..config import LabConfig
from ..errors import ConfigError, TargetNotFound, TargetStateError
from ..localnet.services import kind_of, ports_column
from ..localnet.shim import ZERO_TIME
from ..localnet.supervisor import ACTIVE_STATUSES, SHIM_RECORD_TIMEOUT, Localnet, tail_lines, wait_until

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LocalBackend", "TARGET_PREFIX", "human_duration"]

logger = logging.getLogger(__name__)

#: Only targets whose name starts with this prefix are ever acted on.
TARGET_PREFIX = "virtengine-"
#: Seconds to wait until the kernel shows a signalled process as stopped or resumed.
SIGNAL_SETTLE_TIMEOUT = 2.0
TARGET_COLUMNS = ["NAME", "KIND", "STATUS", "PID", "PORTS"]


class LocalBackend:
    """Targets of the embedded localnet, handled like Docker containers.

    Takes the lab configuration and, for tests, a ready Localnet (one built from
    ``config`` when None).
    """

    name = "local"

    def __init__(self, config: LabConfig, *, localnet: Localnet | None = None):
        self.config = config
        self.localnet = localnet or Localnet(config)

    def up(self) -> list[dict]:
        """Start the localnet (see Localnet.up) and return its services."""
        return self.localnet.up()

    def down(self, timeout: float | None = None) -> list[dict]:
        """Stop the localnet (see Localnet.down) and return its services.

        ``timeout`` is the grace period before SIGKILL in seconds, multiplied by
        ``config.time_scale``. The default is 10 s scaled, but at least 5 s.
        """
        return self.localnet.down(timeout)

    def network(self):
        """Return the localnet's network file (validators, services, ports, chain id), or None before up()."""
        return self.localnet.network()

    def services(self) -> list[dict]:
        """Return one dict per process, validators first, shaped for `incidentlab lab status --json`."""
        return self.localnet.services()

    def is_up(self) -> bool:
        """Return True when at least one process of the localnet is running or paused."""
        return self.localnet.is_up()

    def targets(self) -> "pd.DataFrame":
        """Return the targets like `docker ps -a`: NAME, KIND, STATUS, PID, PORTS, sorted by name.

        KIND is validator, gateway or client. STATUS reads like Docker's: "Up 16 seconds",
        "Up 16 seconds (Paused)", "Exited (137) 5 seconds ago" or "Created". PID is 0 when the
        target is not running.
        """
        rows = []
        now = _dt.datetime.now(_dt.timezone.utc)
        network = self.localnet.network()
        for spec in network.specs if network else ():
            if not spec.name.startswith(TARGET_PREFIX):
                continue
            state = self.localnet.state(spec.name)
            rows.append({
                "NAME": spec.name,
                "KIND": kind_of(spec),
                "STATUS": _ps_status(state, now),
                "PID": state["pid"] if state["status"] in ACTIVE_STATUSES else 0,
                "PORTS": ports_column(spec),
            })
        import pandas as pd

        return pd.DataFrame(rows, columns=TARGET_COLUMNS).sort_values("NAME", ignore_index=True)

    def inspect(self, name: str) -> dict:
        """Return the target's state shaped like ``docker inspect``'s ``.State``.

        Keys: Status (created, running, paused or exited), Running, Paused, Restarting,
        OOMKilled, Dead, Pid (0 when not running), ExitCode, Error, StartedAt, FinishedAt.
        A paused target is both Running and Paused, as in Docker. Raises TargetNotFound.
        """
        state = self.localnet.state(self._check(name))
        status = state["status"]
        active = status in ACTIVE_STATUSES
        return {
            "Status": status,
            "Running": active,
            "Paused": status == "paused",
            "Restarting": False,
            "OOMKilled": bool(state.get("oom_killed", False)),
            "Dead": False,
            "Pid": state["pid"] if active else 0,
            "ExitCode": state["exit_code"],
            "Error": state.get("error", ""),
            "StartedAt": state["started_at"],
            "FinishedAt": state["finished_at"],
        }

    def logs(self, name: str, tail: int | str | None = 50, timestamps: bool = False) -> str:
        """Return the last ``tail`` lines of the target's log, like ``docker logs --tail``.

        ``tail`` is a number of lines, or "all" (or None) for the whole log. With
        ``timestamps`` each line keeps its RFC 3339 time prefix. Raises TargetNotFound, and
        ConfigError for an invalid ``tail``.
        """
        name = self._check(name)
        lines = tail_lines(self.localnet.log_path(name), _tail_count(tail))
        if not timestamps:
            lines = [line.partition(" ")[2] for line in lines]
        return "".join(line + "\n" for line in lines)

    def pause(self, name: str) -> dict:
        """Freeze the target with SIGSTOP, like `docker pause`, and return its new State.

        The process keeps its sockets, so clients connect and never get a response. Raises
        TargetStateError when the target is already paused or not running.
        """
        state = self._active_state(name, "pause")
        if state["status"] == "paused":
            raise TargetStateError(name, "paused", f"target {name} is already paused; resume it with unpause({name!r})")
        return self._signal(name, _signal.SIGSTOP, "paused")

    def unpause(self, name: str) -> dict:
        """Resume a paused target with SIGCONT, like `docker unpause`, and return its new State.

        Raises TargetStateError when the target is not paused.
        """
        state = self.localnet.state(self._check(name))
        if state["status"] != "paused":
            raise TargetStateError(
                name, state["status"],
                f"target {name} is not paused (status {state['status']}), so there is nothing to unpause; "
                f"check its state with inspect({name!r})",
            )
        return self._signal(name, _signal.SIGCONT, "running")

    def stop(self, name: str, timeout: float = 10) -> dict:
        """Stop the target like `docker stop`: SIGTERM, then SIGKILL after the grace period.

        ``timeout`` is the grace period in seconds, multiplied by ``config.time_scale``. A
        target that is not running is left as it is. Returns the new State.
        """
        name = self._check(name)
        if not isinstance(timeout, (int, float)) or timeout < 0:
            raise ConfigError(f"timeout={timeout!r} is invalid; give the grace period in seconds, 0 or more")
        before = self.localnet.state(name)
        if before["status"] not in ACTIVE_STATUSES:
            return self._logged("stop: nothing to do for", name)
        self.localnet.stop_service(name, timeout)
        return self._logged("stopped", name, before["pid"])

    def kill(self, name: str, signal: int | str = "SIGKILL") -> dict:
        """Send a signal to the target like `docker kill --signal` and return its new State.

        ``signal`` is a name ("SIGKILL", "KILL", "term") or a number. After SIGKILL the call
        waits until the exit is recorded. Raises TargetStateError when the target is not running
        and ConfigError for an unknown signal.
        """
        signum = _parse_signal(signal)
        self._active_state(name, "kill")
        expected = {_signal.SIGKILL: "exited", _signal.SIGSTOP: "paused", _signal.SIGCONT: "running"}.get(signum)
        return self._signal(name, signum, expected)

    def start(self, name: str) -> dict:
        """Start a stopped target like `docker start` and return its new State.

        The target gets the same command, data and ports, and the call returns once it is ready (a
        validator responds to GET /health, the gateway to GET /metrics). A running target is left as it is.
        Raises TargetStateError when it is paused.
        """
        state = self.localnet.state(self._check(name))
        if state["status"] == "paused":
            raise TargetStateError(name, "paused", f"target {name} is paused, so it cannot be started; use unpause({name!r})")
        if state["status"] == "running":
            return self._logged("start: nothing to do for running", name)
        self.localnet.start_service(name)
        return self._logged("started", name)

    def restart(self, name: str, timeout: float = 10) -> dict:
        """Stop then start the target like `docker restart` and return its new State.

        ``timeout`` is the grace period of the stop, as in stop().
        """
        self.stop(name, timeout)
        return self.start(name)

    def endpoints(self) -> dict[str, dict[str, str]]:
        """Return the probe endpoints of each validator: ``{name: {"rpc": url, "metrics": url}}``."""
        return {
            service["name"]: {"rpc": service["rpc"], "metrics": service["metrics"]}
            for service in self.localnet.services()
            if service["name"].startswith(TARGET_PREFIX) and service["kind"] == "validator"
        }

    # -- private helpers ----------------------------------------------------------------

    def _names(self) -> list[str]:
        network = self.localnet.network()
        if network is None:
            return []
        return sorted(spec.name for spec in network.specs if spec.name.startswith(TARGET_PREFIX))

    def _check(self, name: str) -> str:
        names = self._names()
        if name not in names:
            raise TargetNotFound(str(name), names)
        return name

    def _active_state(self, name: str, action: str) -> dict:
        state = self.localnet.state(self._check(name))
        if state["status"] not in ACTIVE_STATUSES:
            raise TargetStateError(
                name, state["status"],
                f"cannot {action} target {name}: it is not running (status {state['status']}); start it with start({name!r})",
            )
        return state

    def _signal(self, name: str, signum: int, expected: str | None) -> dict:
        state = self.localnet.signal_service(name, signum)
        if expected is not None:
            timeout = SHIM_RECORD_TIMEOUT if expected == "exited" else SIGNAL_SETTLE_TIMEOUT
            wait_until(lambda: self.localnet.state(name)["status"] == expected, timeout)
        return self._logged(f"sent {_signal.Signals(signum).name} to", name, state["pid"])

    def _logged(self, action: str, name: str, pid: int | None = None) -> dict:
        new_state = self.inspect(name)
        logger.info("%s target %s pid=%s, now %s", action, name, pid or new_state["Pid"], new_state["Status"])
        return new_state


def human_duration(seconds: float) -> str:
    """Format a duration the way `docker ps` does: "Less than a second", "16 seconds", "About a minute", "2 hours".

    The thresholds are those of HumanDuration in docker/go-units, which truncates below one hour and
    rounds to the nearest hour above.
    """
    minutes, hours = int(seconds) // 60, int(seconds / 3600 + 0.5)
    seconds = int(seconds)
    if seconds < 1:
        return "Less than a second"
    if seconds == 1:
        return "1 second"
    if seconds < 60:
        return f"{seconds} seconds"
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def _ps_status(state: dict, now: _dt.datetime) -> str:
    status = state["status"]
    if status == "created":
        return "Created"
    if status in ACTIVE_STATUSES:
        up = f"Up {human_duration(_seconds_since(state['started_at'], now))}"
        return f"{up} (Paused)" if status == "paused" else up
    ago = human_duration(_seconds_since(state["finished_at"], now))
    return f"Exited ({state['exit_code']}) {ago} ago"


def _seconds_since(timestamp: str, now: _dt.datetime) -> float:
    if not timestamp or timestamp == ZERO_TIME:
        return 0.0
    # datetime parses at most microseconds, so the nanosecond digits are cut to six.
    head, _, fraction = timestamp.rstrip("Z").partition(".")
    parsed = _dt.datetime.fromisoformat(f"{head}.{(fraction or '0')[:6]:0<6}+00:00")
    return max(0.0, (now - parsed).total_seconds())


def _tail_count(tail: int | str | None) -> int | None:
    if tail is None or tail == "all":
        return None
    if isinstance(tail, bool) or not isinstance(tail, int) or tail < 0:
        raise ConfigError(f"tail={tail!r} is invalid; give a number of lines (0 or more) or 'all'")
    return tail


def _parse_signal(value: int | str) -> int:
    try:
        if isinstance(value, str) and not value.strip().isdigit():
            text = value.strip().upper()
            return int(_signal.Signals[text if text.startswith("SIG") else f"SIG{text}"])
        return int(_signal.Signals(int(value)))
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"signal={value!r} is not a known signal; use a name like 'SIGKILL' or 'TERM', or a number like 9") from exc

"""Faults with guaranteed rollback: pause, pause cycles, stop, kill, restart and CPU stress.

Each fault is written to the journal with its exact undo before it is applied, and is undone
on normal exit, on an exception, on KeyboardInterrupt, on SIGTERM and at interpreter exit.
Faults act only on the lab's own targets (names starting ``virtengine-``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, FaultError, TargetNotFound
from .guard import register_active, unregister_active
from .journal import Journal, new_fault_id, process_identity
from .undo import run_undo

if TYPE_CHECKING:
    from ..lab import Lab

__all__ = ["Fault", "Pause", "PauseCycle", "Stop", "Kill", "Restart", "CpuStress", "FAULTS", "register"]

logger = logging.getLogger(__name__)

TARGET_PREFIX = "virtengine-"
#: Maximum fault duration accepted, in seconds before time scaling.
MAX_DURATION = 24 * 3600
FAULTS: dict[str, type["Fault"]] = {}


def register(kind: str):
    """Class decorator adding a fault class to FAULTS under ``kind`` (later faults plug in the same way)."""
    def decorate(cls: type["Fault"]) -> type["Fault"]:
        cls.kind = kind
        FAULTS[kind] = cls
        return cls
    return decorate


class Fault:
    """One fault on one target: ``inject()``/``revert()``, or a ``with`` block.

    Takes the lab, the target name and ``dry_run`` (plan only: nothing is journaled or changed).
    Raises TargetNotFound for a target outside the lab and ConfigError for invalid parameters.
    """

    kind = ""

    def __init__(self, lab: "Lab", target: str, *, dry_run: bool = False, record: bool = True,
                 detached: bool = False) -> None:
        if not isinstance(target, str) or not target.startswith(TARGET_PREFIX):
            raise TargetNotFound(str(target), lab.validators())
        lab.backend.inspect(target)  # raises TargetNotFound with the known names
        self.lab = lab
        self.target = target
        self.dry_run = dry_run
        self.record = record
        # A detached fault outlives the process that injected it (the chaos command), like
        # `docker pause`. Its opposite command, halt, cleanup or its expiry undoes it.
        self.detached = detached
        self.id = new_fault_id(self.kind)
        self.journal = Journal(lab.config.home)
        self.entry: dict | None = None

    # -- what each fault defines --------------------------------------------------------

    def params(self) -> dict:
        return {}

    def plan(self) -> list[str]:
        """Return the steps inject() would take, as text (what dry_run shows)."""
        raise NotImplementedError

    def undo_steps(self) -> list[dict]:
        """Return the undo as data: steps that ``incidentlab cleanup`` can run without this object."""
        return [{"op": "resume", "target": self.target}]

    def apply(self) -> None:
        raise NotImplementedError

    def duration(self) -> float | None:
        """Seconds (after time scaling) until the fault ends by itself, or None for open-ended faults."""
        return None

    # -- lifecycle ----------------------------------------------------------------------

    def inject(self) -> "Fault":
        """Journal the fault, apply it and arm the rollback; return self. In dry_run, only log the plan."""
        if self.dry_run:
            for step in self.plan():
                logger.info("dry run fault=%s target=%s: would %s", self.id, self.target, step)
            return self
        if self.entry is not None:
            raise FaultError(f"fault {self.id} was already injected; create a new fault object to inject again")
        started = _dt.datetime.now(_dt.timezone.utc)
        duration = self.duration()
        self.entry = self.journal.write({
            "id": self.id, "kind": self.kind, "backend": self.lab.backend.name, "target": self.target,
            "home": str(self.lab.config.home), "params": self.params(), "undo": self.undo_steps(),
            "owner": process_identity(), "started_at": _iso(started),
            "expires_at": _iso(started + _dt.timedelta(seconds=duration)) if duration else None,
            "state": "pending", "detached": self.detached,
        })
        if not self.detached:
            register_active(self)
        try:
            self.apply()
        except BaseException:
            self.revert()
            raise
        self.entry["state"] = "active"
        self.journal.write(self.entry)
        self._timeline("fault_injected", f"{self.kind} on {self.target}", started)
        logger.info("fault injected fault=%s kind=%s target=%s params=%s", self.id, self.kind, self.target, self.params())
        return self

    def revert(self) -> bool:
        """Undo the fault if it is still open and verify the target; return True once verified.

        Safe to call again. A failed undo is logged as an error and stays open in the journal,
        so ``incidentlab cleanup`` retries it.
        """
        if self.dry_run or self.entry is None or self.entry["state"] == "reverted":
            return True
        self.stop_background()
        ok, note = run_undo(self.entry["undo"], self.lab.backend)
        self.entry["state"] = "reverted" if ok else "revert_failed"
        self.entry["note"] = note
        self.journal.write(self.entry)
        if ok:
            unregister_active(self)
            self._timeline("fault_reverted", f"{self.kind} on {self.target} reverted", None)
            logger.info("fault reverted fault=%s target=%s", self.id, self.target)
        else:
            logger.error("ROLLBACK FAILED fault=%s target=%s: %s; run `incidentlab cleanup`", self.id, self.target, note)
        return ok

    def stop_background(self) -> None:
        """Stop a background thread or process of the fault (pause cycles, CPU stress)."""

    def __enter__(self) -> "Fault":
        return self.inject()

    def __exit__(self, *exc_info: Any) -> None:
        self.revert()

    def __repr__(self) -> str:
        if self.entry:
            state = self.entry["state"]
        elif self.dry_run:
            state = "dry run"
        else:
            state = "not injected"
        return f"<{type(self).__name__} {self.id} target={self.target} {state}>"

    def _timeline(self, kind: str, message: str, when: _dt.datetime | None) -> None:
        simulation = self.lab.simulation_running
        if not self.record or simulation is None or simulation.incident is None:
            return
        simulation.record_fault(kind, message, when, fault_id=self.id, target=self.target, fault_kind=self.kind)


@register("pause")
class Pause(Fault):
    """Freeze the target (``docker pause``; SIGSTOP on the local backend) until reverted."""

    def plan(self) -> list[str]:
        return [f"pause {self.target}", f"on revert: unpause {self.target}"]

    def apply(self) -> None:
        self.lab.backend.pause(self.target)


@register("pause-cycle")
class PauseCycle(Fault):
    """Pause and unpause the target ``cycles`` times on a background thread, always ending unpaused.

    ``paused`` and ``running`` are seconds before time scaling (the lab document's loop uses 2 and 3).
    """

    def __init__(self, lab: "Lab", target: str, *, cycles: int = 5, paused: float = 2.0, running: float = 3.0,
                 **options: Any) -> None:
        super().__init__(lab, target, **options)
        if isinstance(cycles, bool) or not isinstance(cycles, int) or not 1 <= cycles <= 10_000:
            raise ConfigError(f"cycles={cycles!r} is invalid; use a whole number from 1 to 10000")
        self.cycles = cycles
        self.paused = _check_seconds("paused", paused)
        self.running = _check_seconds("running", running)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def params(self) -> dict:
        return {"cycles": self.cycles, "paused": self.paused, "running": self.running}

    def duration(self) -> float:
        return self.cycles * (self.paused + self.running) * self.lab.config.time_scale

    def plan(self) -> list[str]:
        return [f"{self.cycles} times: pause {self.target} for {self.paused} s, then run for {self.running} s "
                f"(x time_scale {self.lab.config.time_scale})", f"on revert: unpause {self.target}"]

    def apply(self) -> None:
        self._thread = threading.Thread(target=self._cycle, name=f"pause-cycle-{self.target}", daemon=True)
        self._thread.start()

    def stop_background(self) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every cycle has run; return True when finished."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _still_open(self) -> bool:
        """Return False once another process (halt, cleanup) has closed this fault's journal entry."""
        try:
            return self.journal.read(self.id)["state"] in ("pending", "active")
        except Exception:
            return True

    def _cycle(self) -> None:
        scale = self.lab.config.time_scale
        backend = self.lab.backend
        try:
            for _ in range(self.cycles):
                if self._stopping.is_set() or not self._still_open():
                    break
                backend.pause(self.target)
                self._stopping.wait(self.paused * scale)
                backend.unpause(self.target)
                if self._stopping.wait(self.running * scale):
                    break
        except Exception:
            logger.exception("pause cycle on %s stopped early fault=%s", self.target, self.id)
        finally:
            run_undo(self.undo_steps(), backend)
        if not self._stopping.is_set():
            self.revert()


@register("stop")
class Stop(Fault):
    """Stop the target like ``docker stop`` (SIGTERM, SIGKILL after ``timeout`` seconds)."""

    def __init__(self, lab: "Lab", target: str, *, timeout: float = 10, **options: Any) -> None:
        super().__init__(lab, target, **options)
        self.timeout = _check_seconds("timeout", timeout, allow_zero=True)

    def params(self) -> dict:
        return {"timeout": self.timeout}

    def plan(self) -> list[str]:
        return [f"stop {self.target} (grace {self.timeout} s)", f"on revert: start {self.target}"]

    def apply(self) -> None:
        self.lab.backend.stop(self.target, timeout=self.timeout)


@register("kill")
class Kill(Fault):
    """Send ``signal`` to the target like ``docker kill --signal`` (default SIGKILL)."""

    def __init__(self, lab: "Lab", target: str, *, signal: str | int = "SIGKILL", **options: Any) -> None:
        super().__init__(lab, target, **options)
        self.signal = signal

    def params(self) -> dict:
        return {"signal": str(self.signal)}

    def plan(self) -> list[str]:
        return [f"send {self.signal} to {self.target}", f"on revert: start or unpause {self.target}"]

    def apply(self) -> None:
        self.lab.backend.kill(self.target, signal=self.signal)


@register("restart")
class Restart(Fault):
    """Restart the target like ``docker restart``; the undo makes sure it runs afterwards."""

    def plan(self) -> list[str]:
        return [f"restart {self.target}", f"on revert: start {self.target} if it is not running"]

    def apply(self) -> None:
        self.lab.backend.restart(self.target)


@register("cpu-stress")
class CpuStress(Fault):
    """Burn CPU beside the target for ``duration`` seconds with ``workers`` busy processes.

    The workers end by themselves at the deadline, even if nothing reverts the fault. On Docker
    they run inside the target's container. NOTE: on the local backend the workers compete with
    the target for the machine's cores; they are not placed in the target's cgroup.
    """

    def __init__(self, lab: "Lab", target: str, *, duration: float = 60, workers: int | None = None,
                 **options: Any) -> None:
        super().__init__(lab, target, **options)
        self.seconds = _check_seconds("duration", duration)
        count = workers if workers is not None else (os.cpu_count() or 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 64:
            raise ConfigError(f"workers={workers!r} is invalid; use a whole number from 1 to 64")
        self.workers = count
        self._pids: list[dict] = []

    def params(self) -> dict:
        return {"duration": self.seconds, "workers": self.workers}

    def duration(self) -> float:
        return self.seconds * self.lab.config.time_scale

    def plan(self) -> list[str]:
        return [f"start {self.workers} busy processes for {self.duration():.1f} s beside {self.target}",
                "on revert: kill them"]

    def undo_steps(self) -> list[dict]:
        if self.lab.backend.name == "docker":
            return [{"op": "docker_kill_marked", "target": self.target, "marker": self.id}]
        return [{"op": "kill_process", **identity} for identity in self._pids]

    def apply(self) -> None:
        deadline = time.time() + self.duration()
        # The fault id in the code lets the undo find these processes (inside a container too).
        code = f"import time  # {self.id}\nwhile time.time() < {deadline!r}:\n    pass\n"
        if self.lab.backend.name == "docker":
            # Inside the target's container, so the burners share its cgroup, as `docker exec stress` does.
            container = self.lab.backend.container(self.target)
            for _ in range(self.workers):
                container.exec_run(["python3", "-c", code], detach=True)
            return
        for _ in range(self.workers):
            process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            self._pids.append(process_identity(process.pid))
            threading.Thread(target=process.wait, daemon=True).start()  # reap it when it ends
        # The undo needs the worker pids, which exist only now.
        self.entry["undo"] = self.undo_steps()
        self.journal.write(self.entry)


def _check_seconds(name: str, value: Any, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={value!r} is invalid; give a number of seconds")
    low = 0 if allow_zero else 0.001
    if not low <= value <= MAX_DURATION:
        raise ConfigError(f"{name}={value!r} is out of range; use {'0' if allow_zero else 'more than 0'} "
                          f"to {MAX_DURATION} seconds")
    return float(value)


def _iso(moment: _dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# The cluster faults register themselves in FAULTS; they import this module, so they come last.
from . import cluster_faults  # noqa: E402,F401

# Registers "veid-bad-revision"; imported last because it subclasses Fault.
from . import veid_fault  # noqa: E402,F401

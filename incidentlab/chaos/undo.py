"""Undo steps of the fault journal, run by the fault itself or by ``incidentlab cleanup``.

A step is data (``{"op": "resume", "target": ...}``), so a process that never saw the fault
object can undo it. Each step is safe to run twice and is verified after it runs.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from ..errors import IncidentLabError
from .journal import process_alive

__all__ = ["run_undo"]

logger = logging.getLogger(__name__)

VERIFY_TIMEOUT = 5.0


def run_undo(steps: list[dict], backend) -> tuple[bool, str]:
    """Run every undo step on ``backend``; return (all verified, a note saying what was done)."""
    notes, ok = [], True
    for step in steps:
        try:
            done = _STEPS[step["op"]](step, backend)
        except KeyError:
            done, ok = f"unknown undo step {step!r}", False
        except IncidentLabError as exc:
            done, ok = f"{step['op']} failed: {exc}", False
        except OSError as exc:
            done, ok = f"{step['op']} failed: {exc}", False
        if done.startswith("FAILED"):
            ok = False
        notes.append(done)
    return ok, "; ".join(notes) or "nothing to undo"


def _resume(step: dict, backend) -> str:
    """Bring a target back to running: unpause a paused one, start a stopped one, then verify."""
    target = step["target"]
    status = backend.inspect(target)["Status"]
    if status == "paused":
        backend.unpause(target)
        action = f"unpaused {target}"
    elif status in ("exited", "created", "dead"):
        backend.start(target)
        action = f"started {target}"
    else:
        action = f"{target} already {status}"
    state = backend.inspect(target)
    if state["Status"] != "running" or state["Paused"]:
        return f"FAILED: {target} is {state['Status']} after the undo, expected running"
    return action


def _kill_process(step: dict, backend) -> str:
    """Kill a helper process of the fault (a CPU burner), checked by pid and start time."""
    if not process_alive(step):
        return f"process {step['pid']} already gone"
    os.kill(step["pid"], signal.SIGKILL)
    deadline = time.monotonic() + VERIFY_TIMEOUT
    while process_alive(step) and time.monotonic() < deadline:
        time.sleep(0.02)
    if process_alive(step):
        return f"FAILED: process {step['pid']} still runs after SIGKILL"
    return f"killed process {step['pid']}"


def _remove_route(step: dict, backend) -> str:
    """Send peers and probes straight to the target again, then verify the route is gone."""
    from ..localnet.routes import read_routes, remove_routes

    removed = remove_routes(step["directory"], step["target"])
    if step["target"] in read_routes(step["directory"], live_only=False):
        return f"FAILED: the route to {step['target']} is still in {step['directory']}/routes.json"
    return f"removed the route to {step['target']}" if removed else f"no route to {step['target']}"


def _stop_proxy(step: dict, backend) -> str:
    """Stop a fault proxy found through its state file; its own pid and command line are checked."""
    from .._fileio import read_json

    state_path = step["state"]
    try:
        state = read_json(state_path)
    except ValueError:
        state = None
    if not state:
        return f"proxy {os.path.basename(state_path)} not running"
    pid = int(state["pid"])
    if not _is_proxy(pid):
        return f"proxy pid {pid} already gone"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + VERIFY_TIMEOUT
    while _is_proxy(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _is_proxy(pid):
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    if _is_proxy(pid):
        return f"FAILED: proxy pid {pid} still runs"
    return f"stopped proxy pid {pid}"


# Run inside the container: SIGKILL every process whose command line contains the marker.
_KILL_MARKED = """
import os, signal, sys
marker, killed = sys.argv[1].encode(), 0
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as handle:
            if marker in handle.read() and int(pid) != os.getpid():
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
    except OSError:
        pass
print(killed)
"""


def _docker_kill_marked(step: dict, backend) -> str:
    """Kill the fault's helper processes inside the target's container (found by the fault id)."""
    container = backend.container(step["target"])
    container.reload()
    if container.status != "running":
        return f"{step['target']} is {container.status}: its processes are gone"
    result = container.exec_run(["python3", "-c", _KILL_MARKED, step["marker"]])
    if result.exit_code != 0:
        return f"FAILED: cleaning processes in {step['target']} exited {result.exit_code}"
    return f"killed {result.output.decode().strip()} process(es) in {step['target']}"


def _veid_rollback(step: dict, backend) -> str:
    """Roll the VEID service back to the good revision recorded before the fault, then verify it."""
    from ..veid.client import restore_revision

    return restore_revision(step["url"], step["to"], step["config"])


def _netem_delete(step: dict, backend) -> str:
    from .netem import delete_netem

    return delete_netem(backend, step["target"], step.get("dev", "eth0"))


def _cluster(step: dict, backend) -> str:
    """Undo a change in the provider's cluster (a quota, a batch workload, a deployment's resources)."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException
    from urllib3.exceptions import HTTPError

    from .cluster_faults import run_cluster_undo

    try:
        return run_cluster_undo(step)
    except (ApiException, ConfigException, HTTPError) as exc:
        # An unreachable or refusing cluster leaves the fault open, so a later cleanup retries it.
        return f"FAILED: {step['action']} in {step['namespace']} (context {step['context']}): {exc}"


def _is_proxy(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read()
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            zombie = handle.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return False
    return b"incidentlab.chaos.proxy" in command and not zombie


_STEPS = {
    "resume": _resume,
    "kill_process": _kill_process,
    "remove_route": _remove_route,
    "stop_proxy": _stop_proxy,
    "netem_delete": _netem_delete,
    "docker_kill_marked": _docker_kill_marked,
    "cluster": _cluster,
    "veid_rollback": _veid_rollback,
}

"""netem latency inside a Docker container: the checks that come first, the qdisc and its removal.

netem needs ``tc`` in the target's network namespace, the NET_ADMIN capability and the kernel's
``sch_netem`` module, and on a host-network container it would slow the whole host.
"""

from __future__ import annotations

import logging
import os
import subprocess

from ..errors import FaultError

__all__ = ["netem_problems", "add_netem", "delete_netem", "kernel_has_netem"]

logger = logging.getLogger(__name__)

PROXY_HINT = "use method='proxy' (the default; `incidentlab chaos latency` uses it), which works on every backend"


def kernel_has_netem() -> bool:
    """Return True when the running kernel has sch_netem loaded, built in, or loadable."""
    if os.path.isdir("/sys/module/sch_netem"):
        return True
    try:
        result = subprocess.run(["modprobe", "--dry-run", "--quiet", "sch_netem"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def netem_problems(backend, target: str) -> list[str]:
    """Return every reason netem cannot delay ``target`` on ``backend``; empty when it can."""
    if backend.name != "docker":
        return [f"the {backend.name} backend's targets share the host's network namespace, so netem "
                "would delay every process on this machine"]
    problems = []
    container = backend.container(target)
    host_config = container.attrs.get("HostConfig", {})
    if host_config.get("NetworkMode") == "host":
        problems.append(f"{target} uses host networking, so netem would slow the whole host")
    if "NET_ADMIN" not in (host_config.get("CapAdd") or []) and not host_config.get("Privileged"):
        problems.append(f"{target} lacks the NET_ADMIN capability (docker run --cap-add NET_ADMIN)")
    if container.status == "running" and container.exec_run(["tc", "-V"]).exit_code != 0:
        problems.append(f"{target} has no tc command (install iproute2 in its image)")
    if not kernel_has_netem():
        problems.append("this kernel has no sch_netem module (not loaded, and modprobe cannot load it)")
    return problems


def add_netem(backend, target: str, delay: float, jitter: float, dev: str = "eth0") -> None:
    """Replace the root qdisc of ``dev`` in ``target`` with netem delay; raise FaultError when impossible."""
    problems = netem_problems(backend, target)
    if problems:
        raise FaultError(f"netem latency is not possible on {target}: {'; '.join(problems)}. {PROXY_HINT}")
    command = ["tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay",
               f"{delay * 1000:g}ms", f"{jitter * 1000:g}ms"]
    result = backend.container(target).exec_run(command)
    if result.exit_code != 0:
        raise FaultError(f"`{' '.join(command)}` failed in {target} (exit {result.exit_code}): "
                         f"{result.output.decode(errors='replace').strip()}. {PROXY_HINT}")


def delete_netem(backend, target: str, dev: str = "eth0") -> str:
    """Delete the root qdisc of ``dev`` only when it is netem (the one the fault added)."""
    if backend.name != "docker":
        return f"no netem qdisc on the {backend.name} backend"
    # NOTE: this path has not run here: this machine's kernel has no sch_netem.
    container = backend.container(target)
    shown = container.exec_run(["tc", "qdisc", "show", "dev", dev])
    if shown.exit_code != 0 or b"netem" not in shown.output:
        return f"no netem qdisc on {target} {dev}"
    deleted = container.exec_run(["tc", "qdisc", "del", "dev", dev, "root"])
    if deleted.exit_code != 0:
        return f"FAILED: tc qdisc del in {target} exited {deleted.exit_code}"
    return f"deleted netem qdisc on {target} {dev}"

"""Port registry of a batch: parallel jobs create their localnets with ports no other running job has chosen.

A localnet's ports are chosen free when its network file is written but bound only when its
services start, so two labs created at once could draw the same port. The registry is a JSON
file in the batch's work folder, changed under an fcntl lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from pathlib import Path

from .._fileio import read_json, write_json_atomic
from ..errors import LocalnetError

__all__ = ["create_lab_network", "release_ports"]

logger = logging.getLogger(__name__)

REGISTRY = "ports.json"
#: Networks drawn before giving up when every draw shares a port with another job.
MAX_DRAWS = 20


def create_lab_network(home: Path, registry_dir: Path, key: str, *, time_scale: float) -> list[int]:
    """Write the localnet network file of ``home`` with free ports that no other job in the registry has recorded.

    Returns the ports and records them under ``key``. Raises LocalnetError when MAX_DRAWS
    networks in a row all share a port with another job.
    """
    from ..config import DEFAULT_CHAIN_ID, DEFAULT_VALIDATORS
    from ..localnet.network import create_network

    with _locked(registry_dir) as registry:
        taken = {port for other, ports in registry.items() if other != key for port in ports}
        for _ in range(MAX_DRAWS):
            network = create_network(home / "localnet", chain_id=DEFAULT_CHAIN_ID, validators=DEFAULT_VALIDATORS,
                                     time_scale=time_scale, classic_ports=False)
            ports = sorted(port for spec in network.specs for port in spec.ports.values())
            if not taken & set(ports):
                registry[key] = ports
                logger.info("job %s: localnet ports %s", key, ports)
                return ports
            logger.info("job %s: drew a port of another job, drawing again", key)
    raise LocalnetError(f"job {key}: {MAX_DRAWS} draws of free ports all shared a port with another job; "
                        "run the batch with fewer --workers")


def release_ports(registry_dir: Path, key: str) -> None:
    """Remove ``key``'s ports from the registry once its lab has stopped."""
    with _locked(registry_dir) as registry:
        registry.pop(key, None)


@contextlib.contextmanager
def _locked(registry_dir: Path):
    """Yield the registry as a dict under an exclusive lock, and write it back on exit."""
    registry_dir.mkdir(parents=True, exist_ok=True)
    with open(registry_dir / f"{REGISTRY}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        registry = read_json(registry_dir / REGISTRY, default={})
        try:
            yield registry
        finally:
            write_json_atomic(registry_dir / REGISTRY, registry)

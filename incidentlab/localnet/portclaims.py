"""Port claims shared by every lab of one user, so that two labs on one machine never pick the same port.

A lab claims each port of its network with a file named after the port, in a per-user folder
under the system's temporary directory. The file contains the path of the lab's network.json.
A claim counts while that network.json exists, so a stopped validator keeps its ports even
when nothing listens on them. Standard library only: validators import it in containers.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

__all__ = ["claims_dir", "claimed_by_other", "claimed_ports", "claim", "release"]

logger = logging.getLogger(__name__)

#: Environment variable that moves the claims folder (tests and unusual setups).
CLAIMS_ENV = "INCIDENTLAB_PORT_CLAIMS"


def claims_dir() -> Path:
    """Return the folder of port claims: $INCIDENTLAB_PORT_CLAIMS, else TMPDIR/incidentlab-ports-UID."""
    configured = os.environ.get(CLAIMS_ENV)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"incidentlab-ports-{os.getuid()}"


def claimed_by_other(port: int, owner: str | os.PathLike) -> bool:
    """Return True when a lab other than ``owner`` (a network.json path) has a live claim on ``port``.

    A claim whose network.json no longer exists is stale: it is removed and does not count.
    """
    path = claims_dir() / str(port)
    try:
        holder = path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        logger.warning("cannot read port claim %s (%s); treating port %d as claimed", path, exc, port)
        return True
    if holder == str(owner):
        return False
    if holder and Path(holder).exists():
        return True
    _remove(path)
    return False


def claim(ports: list[int], owner: str | os.PathLike) -> list[int]:
    """Claim ``ports`` for the lab whose network.json is ``owner``; return the ports another lab has claimed.

    Each claim is written atomically, so two labs that race for a port cannot both get it. The
    caller decides what to do about the ports returned.
    """
    folder = claims_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    lost = []
    for port in ports:
        if claimed_by_other(port, owner):
            lost.append(port)
            continue
        if not _link_claim(folder, port, owner):
            lost.append(port)
    if lost:
        logger.warning("ports %s of %s are claimed by another lab", lost, owner)
    return lost


def claimed_ports(owner: str | os.PathLike) -> set[int]:
    """Return every port that a lab other than ``owner`` has a live claim on."""
    try:
        names = os.listdir(claims_dir())
    except FileNotFoundError:
        return set()
    return {int(name) for name in names if name.isdigit() and claimed_by_other(int(name), owner)}


def release(ports: list[int], owner: str | os.PathLike) -> None:
    """Remove the claims of ``owner`` on ``ports`` (those of another lab stay)."""
    for port in ports:
        path = claims_dir() / str(port)
        try:
            if path.read_text(encoding="utf-8").strip() == str(owner):
                _remove(path)
        except OSError:
            continue


def _link_claim(folder: Path, port: int, owner: str | os.PathLike) -> bool:
    """Create the claim file of ``port`` atomically; return False when another lab has claimed it."""
    staging = folder / f".{port}.{os.getpid()}"
    staging.write_text(str(owner), encoding="utf-8")
    try:
        for _attempt in range(2):
            try:
                os.link(staging, folder / str(port))  # fails when a claim file exists
                return True
            except FileExistsError:
                if claimed_by_other(port, owner):  # removes a stale claim, so the second attempt can win
                    return False
                if (folder / str(port)).exists():
                    return True  # the claim is ours already
        return False
    finally:
        _remove(staging)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass

"""Two local labs on one machine at once: no port or file collides, both make blocks, each stops alone."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests

from incidentlab import Lab

#: Blocks each lab must add while the test watches.
BLOCKS = 3
#: Seconds to wait for BLOCKS blocks at time_scale 0.1 on a busy machine.
BLOCK_WAIT = 20.0


@pytest.fixture
def two_labs(tmp_path):
    labs = []
    try:
        for name in ("first", "second"):
            labs.append(Lab.connect("local", home=tmp_path / name, time_scale=0.1))
        yield labs
    finally:
        for lab in labs:
            try:
                lab.halt()
            finally:
                lab.down()


def test_two_labs_share_nothing(two_labs):
    first, second = two_labs
    first_ports, second_ports = ports_of(first), ports_of(second)
    assert len(first_ports) == len(set(first_ports))
    assert set(first_ports).isdisjoint(second_ports)
    assert first.config.home != second.config.home
    for lab in two_labs:
        files = open_files(lab)
        assert files, f"no open file found for the processes of {lab.config.home}"
        outside = [path for path in files if not path.startswith(str(lab.config.home) + "/")]
        assert outside == [], f"processes of {lab.config.home} have files open outside it"
    for service in first.status()["services"] + second.status()["services"]:
        assert service["status"] == "running", service


def test_two_labs_make_blocks(two_labs):
    for lab in two_labs:
        assert advances(lab), f"the chain in {lab.config.home} made no {BLOCKS} blocks in {BLOCK_WAIT} s"


def test_stopping_one_lab_leaves_the_other(two_labs):
    first, second = two_labs
    first.down()
    assert {s["status"] for s in first.status()["services"]} == {"exited"}
    assert {s["status"] for s in second.status()["services"]} == {"running"}
    assert advances(second)
    with requests.Session() as session:
        session.trust_env = False
        assert session.get(second.gateway_url() + "/rpc/status", timeout=5).status_code == 200


def ports_of(lab) -> list[int]:
    """Return every TCP port the lab's network file assigns: validators' p2p, RPC, metrics and the services'."""
    network = lab.backend.network()
    ports = [port for spec in network.specs for port in spec.ports.values()]
    assert ports, f"no ports in {lab.config.localnet_dir}"
    return ports


def open_files(lab) -> list[str]:
    """Return the regular files that the lab's service processes have open (from /proc/PID/fd)."""
    paths = []
    for name in lab.backend.targets()["NAME"]:
        fd_dir = Path(f"/proc/{lab.inspect(name)['Pid']}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue  # closed since the listing
            if target.startswith("/") and not target.startswith(("/dev/", "/proc/")):
                paths.append(target)
    return paths


def advances(lab) -> bool:
    """Return True once the lab's first validator reports BLOCKS more blocks than at the start."""
    start = lab.rpc.status().latest_block_height
    deadline = time.monotonic() + BLOCK_WAIT
    while time.monotonic() < deadline:
        if lab.rpc.status().latest_block_height >= start + BLOCKS:
            return True
        time.sleep(0.1)
    return False

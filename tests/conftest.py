"""Shared fixtures: localnets of stand-in validators, each in its own tmp lab home, always stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from incidentlab.config import LabConfig
from incidentlab.localnet.supervisor import Localnet

FAKE_NODE = Path(__file__).parent / "helpers" / "fake_node.py"


def fake_node_factory(localnet: Localnet, extra_args: dict[str, list[str]] | None = None):
    """Return a command_factory that runs tests/helpers/fake_node.py, with extra options per validator name."""
    extra_args = extra_args or {}

    def command(spec) -> list[str]:
        return [sys.executable, str(FAKE_NODE), "--network", str(localnet.network_path),
                "--name", spec.name, *extra_args.get(spec.name, [])]

    return command


@pytest.fixture
def make_localnet(tmp_path):
    """Build Localnets of fake validators in tmp lab homes, and stop every process they started at teardown.

    Defaults: 2 validators, time_scale 0.1 (so `docker stop`'s 10 s grace is 1 s), no classic ports.
    The network has no gateway and no client, because a fake validator serves no /status to put behind them.
    """
    created: list[Localnet] = []

    def make(home: str = "lab", *, validators: int = 2, time_scale: float = 0.1,
             classic_ports: bool = False, extra_args: dict[str, list[str]] | None = None) -> Localnet:
        config = LabConfig(home=tmp_path / home, backend="local", validators=validators,
                           time_scale=time_scale, classic_ports=classic_ports)
        localnet = Localnet(config, with_services=False)
        localnet.command_factory = fake_node_factory(localnet, extra_args)
        created.append(localnet)
        return localnet

    yield make
    for localnet in created:
        try:
            localnet.down(timeout=0)
        finally:
            kill_recorded_processes(localnet.run_dir)


def kill_recorded_processes(run_dir: Path) -> None:
    """SIGKILL every shim and child recorded under ``run_dir`` whose command line still matches."""
    for path in run_dir.glob("*.json"):
        state = json.loads(path.read_text())
        for pid, command in ((state["pid"], state["command"]), (state["shim_pid"], state.get("shim_command"))):
            if pid and command_line(pid) == command:
                os.kill(pid, signal.SIGKILL)


def command_line(pid: int) -> list[str] | None:
    """Return the argv of a live process from /proc, or None when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode() for part in raw.split(b"\0")[:-1]] or None


def health_read_times_out(rpc_url: str, timeout: float = 0.5) -> bool:
    """Return True when the RPC port accepts a TCP connection but GET /health gets no response in time.

    Raises ConnectionRefusedError when nothing listens, as for a stopped validator.
    """
    host, port = rpc_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        try:
            sock.recv(1)
        except TimeoutError:
            return True
        return False

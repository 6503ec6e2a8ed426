"""Fault proxy: latency, timeout and reset faults over real sockets on 127.0.0.1, and its CLI process."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from incidentlab.chaos.proxy import FaultProxy, ProxyFault
from incidentlab.errors import ConfigError, FaultError

REPO_ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = b"ping\n"
READ_TIMEOUT = 2.0
DELAY_MS = 50


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo_server():
    """An echo server on 127.0.0.1, as its (host, port)."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _EchoHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def closed_port():
    """A 127.0.0.1 port that is bound but not listening, so every connection to it is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def make_proxy(echo_server):
    """Start FaultProxies in front of the echo server (or ``upstream``), and stop them all at teardown."""
    started: list[FaultProxy] = []

    def make(fault: ProxyFault | None = None, upstream: tuple[str, int] | None = None) -> FaultProxy:
        proxy = FaultProxy(upstream=upstream or echo_server, fault=fault)
        started.append(proxy)
        proxy.start()
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def processes():
    """Popen objects of proxy processes. Any still running at teardown is killed."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()


def connect(proxy: FaultProxy, timeout: float = READ_TIMEOUT) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)


def round_trip(sock: socket.socket, payload: bytes = PAYLOAD) -> float:
    """Send ``payload``, read its echo, and return the seconds it took."""
    started = time.monotonic()
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {received!r}"
        received += chunk
    assert received == payload
    return time.monotonic() - started


def median_round_trip(sock: socket.socket, count: int = 10) -> float:
    return statistics.median(round_trip(sock) for _ in range(count))


def outcome(proxy: FaultProxy) -> str:
    """Return "echo" when a round trip through a new connection works, "reset" on a TCP RST."""
    try:
        with connect(proxy) as sock:
            round_trip(sock)
            return "echo"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"


def wait_for(condition, timeout: float = 5.0, interval: float = 0.02):
    """Poll ``condition`` until it returns a truthy value, and return that value. Fail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout} s")


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def start_cli(processes: list, upstream: tuple[str, int], *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "incidentlab.chaos.proxy", "--listen", "127.0.0.1:0",
               "--upstream", f"{upstream[0]}:{upstream[1]}", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT, env=env)
    processes.append(proc)
    return proc


# --- forwarding ------------------------------------------------------------------------------


def test_pass_through_without_fault(make_proxy):
    proxy = make_proxy()
    with connect(proxy) as sock:
        round_trip(sock)
        round_trip(sock, b"second\n")
    stats = proxy.stats()
    assert stats["connections_total"] == 1
    assert stats["bytes_to_upstream"] == len(PAYLOAD) + 7
    assert stats["bytes_to_client"] == len(PAYLOAD) + 7
    assert stats["faults_applied"] == 0


def test_large_transfer_keeps_order(make_proxy):
    proxy = make_proxy(ProxyFault("latency", delay_ms=5, jitter_ms=5, seed=1))
    payload = bytes(range(256)) * 4096  # 1 MiB: many chunks, each with its own jittered delay
    with connect(proxy, timeout=10) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        received = bytearray()
        while len(received) < len(payload):
            received += sock.recv(65536)
        sender.join()
    assert received == payload


# --- latency ---------------------------------------------------------------------------------


def test_latency_delays_both_directions(make_proxy):
    plain, slow = make_proxy(), make_proxy(ProxyFault("latency", delay_ms=DELAY_MS))
    with connect(plain) as sock:
        baseline = median_round_trip(sock)
    with connect(slow) as sock:
        delayed = median_round_trip(sock)
    added = delayed - baseline
    assert added >= 2 * DELAY_MS / 1000 - 0.002, f"added {added * 1000:.1f} ms"
    assert added < 2 * DELAY_MS / 1000 + 0.15, f"added {added * 1000:.1f} ms"
    assert slow.stats()["chunks_delayed"] == 20


def test_jitter_within_bounds(make_proxy):
    proxy = make_proxy(ProxyFault("latency", delay_ms=DELAY_MS, jitter_ms=20, seed=7))
    with connect(proxy) as sock:
        samples = [round_trip(sock) for _ in range(10)]
    assert min(samples) >= 2 * (DELAY_MS - 20) / 1000 - 0.002, samples
    assert max(samples) < 2 * (DELAY_MS + 20) / 1000 + 0.1, samples
    assert max(samples) - min(samples) > 0.005, f"no jitter visible in {samples}"


def test_set_fault_applies_to_open_connection(make_proxy):
    proxy = make_proxy()
    with connect(proxy) as sock:
        assert round_trip(sock) < 0.05
        proxy.set_fault(ProxyFault("latency", delay_ms=DELAY_MS))
        assert round_trip(sock) >= 2 * DELAY_MS / 1000 - 0.002
        proxy.clear()
        assert round_trip(sock) < 0.05


def test_clear_sends_queued_chunks_at_once(make_proxy):
    proxy = make_proxy(ProxyFault("latency", delay_ms=5000))
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(PAYLOAD)
        time.sleep(0.1)
        proxy.clear()
        assert sock.recv(65536) == PAYLOAD
        assert time.monotonic() - started < 1.0


# --- timeout, reset, probability -------------------------------------------------------------


def test_timeout_holds_until_cleared(make_proxy):
    frozen, healthy = make_proxy(ProxyFault("timeout")), make_proxy()
    with connect(frozen, timeout=0.3) as held:
        held.sendall(PAYLOAD)
        with pytest.raises(socket.timeout):
            held.recv(65536)
        with connect(healthy) as sock:
            round_trip(sock)

        frozen.clear()
        with connect(frozen) as sock:
            round_trip(sock)
        # The frozen connection resumes like a process after SIGCONT, so its echo arrives.
        held.settimeout(READ_TIMEOUT)
        assert held.recv(65536) == PAYLOAD
    assert frozen.stats()["connections_held"] == 1


def test_reset_sends_rst(make_proxy):
    proxy = make_proxy(ProxyFault("reset"))
    # On loopback the RST can arrive before connect() returns, which then raises it.
    with pytest.raises(ConnectionResetError):
        with connect(proxy) as sock:
            sock.recv(65536)
    assert proxy.stats()["connections_reset"] == 1


def test_probability_zero_never_applies(make_proxy):
    proxy = make_proxy(ProxyFault("reset", probability=0.0, seed=3))
    assert [outcome(proxy) for _ in range(5)] == ["echo"] * 5
    assert proxy.stats()["faults_applied"] == 0


def test_probability_draws_repeat_with_seed(make_proxy):
    fault = ProxyFault("reset", probability=0.5, seed=42)
    first, second = make_proxy(fault), make_proxy(fault)
    pattern = [outcome(first) for _ in range(12)]
    assert [outcome(second) for _ in range(12)] == pattern
    assert set(pattern) == {"echo", "reset"}, pattern
    assert first.stats()["connections_reset"] == pattern.count("reset")


# --- upstream errors and stop ----------------------------------------------------------------


def test_refused_upstream_closes_client(make_proxy, closed_port, caplog):
    caplog.set_level(logging.WARNING, logger="incidentlab.chaos.proxy")
    proxy = make_proxy(upstream=("127.0.0.1", closed_port))
    with connect(proxy) as sock:
        started = time.monotonic()
        assert sock.recv(65536) == b""
        assert time.monotonic() - started < 1.0
    assert proxy.stats()["upstream_errors"] == 1
    assert f"127.0.0.1:{closed_port}" in caplog.text


def test_stop_closes_open_connections(make_proxy):
    proxy = make_proxy()
    open_sock = connect(proxy)
    round_trip(open_sock)
    proxy.set_fault(ProxyFault("timeout"))
    held_sock = connect(proxy)
    wait_for(lambda: proxy.stats()["connections_open"] == 2)

    proxy.stop()
    for sock in (open_sock, held_sock):
        with sock:
            try:
                assert sock.recv(65536) == b""
            except ConnectionResetError:
                pass  # closed with data unread, which Linux signals with an RST
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    proxy.stop()


def test_start_on_busy_port_raises(echo_server):
    proxy = FaultProxy(listen=echo_server, upstream=echo_server)
    with pytest.raises(FaultError, match=f"127.0.0.1:{echo_server[1]}"):
        proxy.start()
    proxy.stop()


def test_start_logs_addresses_and_fault(echo_server, caplog):
    caplog.set_level(logging.INFO, logger="incidentlab.chaos.proxy")
    with FaultProxy(upstream=echo_server, fault=ProxyFault("reset")) as proxy:
        pass
    assert f"127.0.0.1:{proxy.port}" in caplog.text
    assert f"127.0.0.1:{echo_server[1]}" in caplog.text
    assert "kind='reset'" in caplog.text


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "fragments"), [
    ({"kind": "jam"}, ["'jam'", "latency, timeout, reset"]),
    ({"kind": "latency", "delay_ms": -1}, ["-1", "0 to 60000"]),
    ({"kind": "latency", "delay_ms": 60001}, ["60001", "0 to 60000"]),
    ({"kind": "latency", "delay_ms": 50, "jitter_ms": 60}, ["60", "0 to 50"]),
    ({"kind": "latency", "probability": 1.5}, ["1.5", "0 to 1"]),
    ({"kind": "latency", "probability": -0.1}, ["-0.1", "0 to 1"]),
    ({"kind": "latency", "probability": float("nan")}, ["nan", "0 to 1"]),
    ({"kind": "reset", "delay_ms": 10}, ["delay_ms=10", "'latency'"]),
    ({"kind": "latency", "seed": "x"}, ["'x'", "integer"]),
])
def test_invalid_fault_names_value(fields, fragments):
    with pytest.raises(ValueError) as excinfo:
        ProxyFault(**fields)
    assert isinstance(excinfo.value, ConfigError)
    for fragment in fragments:
        assert fragment in str(excinfo.value)


@pytest.mark.parametrize(("listen", "upstream", "bad"), [
    (("0.0.0.0", 0), ("127.0.0.1", 1), "0.0.0.0"),
    (("example.com", 0), ("127.0.0.1", 1), "example.com"),
    (("127.0.0.1", 0), ("10.0.0.1", 80), "10.0.0.1"),
])
def test_non_loopback_address_rejected(listen, upstream, bad):
    with pytest.raises(ConfigError) as excinfo:
        FaultProxy(listen, upstream)
    assert repr(bad) in str(excinfo.value)
    assert "allow_non_loopback=True" in str(excinfo.value)


def test_set_fault_rejects_non_fault(echo_server):
    proxy = FaultProxy(upstream=echo_server)
    with pytest.raises(ConfigError, match="'latency'"):
        proxy.set_fault("latency")


# --- command line ----------------------------------------------------------------------------


def test_cli_serves_then_expires(echo_server, processes, tmp_path):
    state_path = tmp_path / "proxy.json"
    expires_at = time.time() + 1.2
    proc = start_cli(processes, echo_server, "--kind", "latency", "--delay-ms", "20", "--jitter-ms", "5",
                     "--seed", "3", "--expires-at", str(expires_at), "--state", str(state_path))

    state = wait_for(lambda: read_state(state_path))
    assert state["pid"] == proc.pid
    assert state["upstream"] == f"127.0.0.1:{echo_server[1]}"
    assert state["fault"] == {"kind": "latency", "delay_ms": 20.0, "jitter_ms": 5.0, "probability": 1.0, "seed": 3}
    assert state["expires_at"] == expires_at
    assert state["started_at"] <= time.time()
    with socket.create_connection(("127.0.0.1", state["port"]), timeout=READ_TIMEOUT) as sock:
        assert round_trip(sock) >= 2 * 15 / 1000 - 0.002

    assert proc.wait(5) == 0
    assert time.time() >= expires_at
    assert not state_path.exists()
    assert proc.stdout.read() == b""
    assert proc.stderr.read() == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", state["port"]), timeout=READ_TIMEOUT)


def test_cli_stops_on_sigterm(echo_server, processes, tmp_path):
    state_path = tmp_path / "proxy.json"
    proc = start_cli(processes, echo_server, "--kind", "timeout", "--expires-at", str(time.time() + 60),
                     "--state", str(state_path))
    wait_for(lambda: read_state(state_path))

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(3) == 0
    assert not state_path.exists()
    assert proc.stderr.read() == b""


def test_cli_rejects_past_expiry(echo_server, processes):
    proc = start_cli(processes, echo_server, "--kind", "reset", "--expires-at", str(time.time() - 1))
    assert proc.wait(5) == 2
    stderr = proc.stderr.read().decode()
    assert "--expires-at" in stderr
    assert "in the past" in stderr

"""Shim and supervisor on real processes: exit codes, logs, state files, up/down, lost shims, locks."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import FAKE_NODE, command_line, health_read_times_out, kill_recorded_processes
from incidentlab.config import LabConfig
from incidentlab.errors import LocalnetError, TargetNotFound, TargetStateError
from incidentlab.localnet import supervisor
from incidentlab.localnet.shim import ZERO_TIME
from incidentlab.localnet.supervisor import Localnet, process_state, tail_lines, wait_until

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (.*)$")
SERVICE_KEYS = {"name", "kind", "status", "pid", "rpc", "metrics", "p2p", "started_at", "finished_at", "exit_code"}
SHIM = [sys.executable, "-m", "incidentlab.localnet.shim"]
SLEEPER = [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"]
#: Environment that lets `python -m incidentlab...` import the package from this source tree.
PACKAGE_ENV = dict(os.environ, PYTHONPATH=str(Path(supervisor.__file__).resolve().parents[2]))


@pytest.fixture
def run_shim(tmp_path):
    """Start shims in the background; kill whatever they still run at teardown."""
    started: list[tuple[subprocess.Popen, Path]] = []

    def run(command: list[str], name: str = "svc") -> tuple[subprocess.Popen, Path, Path]:
        state, log = tmp_path / f"{name}.json", tmp_path / f"{name}.log"
        process = subprocess.Popen([*SHIM, "--state", str(state), "--log", str(log), "--name", name, "--", *command],
                                   env=PACKAGE_ENV)
        started.append((process, state))
        return process, state, log

    yield run
    kill_recorded_processes(tmp_path)
    for process, _ in started:
        process.kill()
        process.wait(5)


def read_state(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def wait_running(state_path: Path) -> dict:
    assert wait_until(lambda: read_state(state_path).get("status") == "running", 10)
    return read_state(state_path)


def get_health(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{url}/health", timeout=timeout) as response:
        return json.loads(response.read())


# -- shim -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("how", "exit_code"), [("exit", 0), (signal.SIGKILL, 137), (signal.SIGTERM, 143)])
def test_shim_records_exit_code(run_shim, how, exit_code):
    command = [sys.executable, "-c", "import sys; sys.exit(0)"] if how == "exit" else SLEEPER
    process, state_path, _ = run_shim(command)
    if how != "exit":
        os.kill(wait_running(state_path)["pid"], how)

    assert process.wait(10) == exit_code
    state = read_state(state_path)
    assert state["status"] == "exited"
    assert state["exit_code"] == exit_code
    assert state["shim_pid"] == process.pid
    assert state["command"] == command
    assert state["oom_killed"] is False
    assert TIMESTAMP.match(state["finished_at"])
    assert state["finished_at"] >= state["started_at"]


def test_shim_state_while_running(run_shim):
    process, state_path, _ = run_shim(SLEEPER)
    state = wait_running(state_path)

    assert state["finished_at"] == ZERO_TIME
    assert TIMESTAMP.match(state["started_at"])
    assert command_line(state["pid"]) == SLEEPER
    assert command_line(process.pid) == state["shim_command"]
    assert os.getsid(process.pid) == process.pid
    assert process_state(state["pid"]) in ("S", "R")


def test_shim_timestamps_log_lines(run_shim):
    script = "import sys; print('out one'); print('out two', flush=True); sys.stderr.write('err three\\nno newline')"
    process, _, log_path = run_shim([sys.executable, "-c", script])
    process.wait(10)

    lines = log_path.read_text().splitlines()
    matches = [LOG_LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [m.group(2) for m in matches] == ["out one", "out two", "err three", "no newline"]
    assert log_path.read_text().endswith("no newline\n")


def test_shim_ignores_terminal_signals(run_shim):
    process, state_path, _ = run_shim(SLEEPER)
    child = wait_running(state_path)["pid"]
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        os.kill(process.pid, signum)
    time.sleep(0.2)

    assert process.poll() is None
    assert command_line(child) == SLEEPER
    os.kill(child, signal.SIGKILL)
    assert process.wait(10) == 137


def test_shim_child_gets_default_signal_handling(run_shim):
    # The shim ignores SIGTERM; its child must not inherit that, or `docker stop` could never work.
    process, state_path, log_path = run_shim(SLEEPER)
    child = wait_running(state_path)["pid"]
    # Once "ready" is logged, python has installed its SIGINT handler (KeyboardInterrupt).
    assert wait_until(lambda: "ready" in (log_path.read_text() if log_path.exists() else ""), 10)
    os.kill(child, signal.SIGINT)

    # Python ends an unhandled KeyboardInterrupt by killing itself with SIGINT: 128 + 2.
    assert process.wait(10) == 130
    assert read_state(state_path)["exit_code"] == 130


def test_shim_missing_command_gives_127(run_shim):
    process, state_path, _ = run_shim(["/nonexistent/validator"])

    assert process.wait(10) == 127
    state = read_state(state_path)
    assert state["exit_code"] == 127
    assert "/nonexistent/validator" in state["error"]


def test_shim_without_separator_is_rejected(tmp_path):
    result = subprocess.run([*SHIM, "--state", "s.json", "--log", "l.log", "--name", "x", "true"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=10,
                            env=PACKAGE_ENV)

    assert result.returncode == 2
    assert "'--'" in result.stderr


# -- supervisor -----------------------------------------------------------------------------


def test_up_starts_healthy_validators(make_localnet):
    localnet = make_localnet()
    services = localnet.up()

    assert [s["name"] for s in services] == ["virtengine-node-0", "virtengine-node-1"]
    for service in services:
        assert set(service) == SERVICE_KEYS
        assert service["kind"] == "validator"
        assert service["status"] == "running"
        assert service["finished_at"] == ZERO_TIME
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", service["rpc"])
        assert service["metrics"].endswith("/metrics")
        assert get_health(service["rpc"]) == {"jsonrpc": "2.0", "id": -1, "result": {}}
        assert os.getsid(localnet.state(service["name"])["shim_pid"]) != os.getsid(0)
        log = localnet.config.home / "logs" / f"{service['name']}.log"
        assert LOG_LINE.match(log.read_text().splitlines()[0])
    assert localnet.is_up()


def test_localnet_outlives_starting_process(make_localnet):
    localnet = make_localnet()
    script = (
        "import sys\n"
        "from incidentlab.config import LabConfig\n"
        "from incidentlab.localnet.supervisor import Localnet\n"
        "config = LabConfig(home=sys.argv[1], validators=2, time_scale=0.1, classic_ports=False)\n"
        "localnet = Localnet(config, with_services=False)\n"
        "localnet.command_factory = lambda spec: [sys.executable, sys.argv[2], '--network', "
        "str(localnet.network_path), '--name', spec.name]\n"
        "localnet.up()\n"
    )
    subprocess.run([sys.executable, "-c", script, str(localnet.config.home), str(FAKE_NODE)],
                   check=True, timeout=30, env=PACKAGE_ENV)

    services = localnet.services()

    assert [s["status"] for s in services] == ["running", "running"]
    assert all(get_health(s["rpc"])["result"] == {} for s in services)
    assert localnet.up() == services


def test_up_when_running_changes_nothing(make_localnet):
    localnet = make_localnet()
    first = localnet.up()

    assert localnet.up() == first


def test_down_stops_everything_and_is_idempotent(make_localnet):
    localnet = make_localnet()
    pids = [s["pid"] for s in localnet.up()]
    services = localnet.down()

    assert [s["status"] for s in services] == ["exited", "exited"]
    assert [s["exit_code"] for s in services] == [0, 0]  # the fake node handles SIGTERM
    assert all(TIMESTAMP.match(s["finished_at"]) for s in services)
    assert all(command_line(pid) is None for pid in pids)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(services[0]["rpc"].rsplit(":", 1)[1])), timeout=1)
    assert localnet.down() == services
    assert not localnet.is_up()


def test_down_resumes_paused_validator_first(make_localnet):
    localnet = make_localnet(validators=1)
    localnet.up()
    localnet.signal_service("virtengine-node-0", signal.SIGSTOP)
    assert wait_until(lambda: localnet.services()[0]["status"] == "paused", 2)

    service = localnet.down(timeout=5)[0]

    # Exit code 0, not 137: the SIGCONT let the validator handle SIGTERM itself.
    assert service["exit_code"] == 0


def test_down_escalates_to_sigkill(make_localnet):
    localnet = make_localnet(validators=1, extra_args={"virtengine-node-0": ["--ignore-sigterm"]})
    localnet.up()
    started = time.monotonic()
    service = localnet.down(timeout=2)[0]

    assert service["exit_code"] == 137
    assert time.monotonic() - started >= 0.2  # 2 s grace times time_scale 0.1
    assert "received SIGTERM" in "\n".join(tail_lines(localnet.log_path("virtengine-node-0"), 20))


def test_start_service_keeps_ports_and_log(make_localnet):
    localnet = make_localnet()
    before = localnet.up()[1]
    localnet.stop_service("virtengine-node-1")
    with pytest.raises(urllib.error.URLError) as refused:
        get_health(before["rpc"])
    assert isinstance(refused.value.reason, ConnectionRefusedError)

    state = localnet.start_service("virtengine-node-1")

    after = localnet.services()[1]
    assert state["status"] == "running"
    assert after["rpc"] == before["rpc"]
    assert after["metrics"] == before["metrics"]
    assert after["pid"] != before["pid"]
    assert get_health(after["rpc"])["result"] == {}
    log = localnet.log_path("virtengine-node-1").read_text()
    assert log.count("starting virtengine-node-1") == 2


def test_sigkill_of_shim_is_detected(make_localnet):
    localnet = make_localnet(validators=1)
    localnet.up()
    state = localnet.state("virtengine-node-0")
    os.kill(state["shim_pid"], signal.SIGKILL)

    assert wait_until(lambda: localnet.services()[0]["status"] == "exited", 5)
    service = localnet.services()[0]
    lost = localnet.state("virtengine-node-0")
    assert service["exit_code"] == 137
    assert f"shim pid {state['shim_pid']} was lost" in lost["error"]
    # The child dies with its shim (PR_SET_PDEATHSIG), so nothing is left unsupervised.
    assert command_line(state["pid"]) is None
    assert localnet.start_service("virtengine-node-0")["status"] == "running"


def test_reused_pid_is_never_signalled(make_localnet):
    localnet = make_localnet(validators=1)
    localnet.up()
    state_path = localnet.run_dir / "virtengine-node-0.json"
    recorded = json.loads(state_path.read_text())
    os.kill(recorded["shim_pid"], signal.SIGKILL)
    assert wait_until(lambda: command_line(recorded["pid"]) is None, 5)

    # Pretend the validator's pid now belongs to an unrelated process.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state_path.write_text(json.dumps({**recorded, "pid": stranger.pid}))
        localnet.down(timeout=0)
        with pytest.raises(TargetStateError, match="not running"):
            localnet.signal_service("virtengine-node-0", signal.SIGKILL)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait(5)


def test_two_homes_get_different_ports(make_localnet):
    first, second = make_localnet("lab-a", classic_ports=True), make_localnet("lab-b", classic_ports=True)
    services = first.up() + second.up()
    ports = [int(s[key].split(":")[2].split("/")[0]) for s in services for key in ("rpc", "metrics", "p2p")]

    assert len(set(ports)) == len(ports)
    assert all(get_health(s["rpc"])["result"] == {} for s in services)


def test_failed_start_names_service_port_and_log(make_localnet):
    localnet = make_localnet(extra_args={"virtengine-node-1": ["--exit-at-start", "3"]})

    with pytest.raises(LocalnetError) as caught:
        localnet.up()

    rpc_port = localnet.network().validator("virtengine-node-1").ports["rpc"]
    message = str(caught.value)
    assert "virtengine-node-1" in message
    assert str(rpc_port) in message
    assert "exited with code 3" in message
    assert "exiting at start with code 3" in message
    assert [s["status"] for s in localnet.services()] == ["exited", "exited"]


def test_busy_port_is_named(make_localnet):
    localnet = make_localnet(validators=1)
    localnet.up()
    localnet.down()
    port = localnet.network().validator("virtengine-node-0").ports["rpc"]

    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(LocalnetError) as caught:
            localnet.up()

    assert f"port {port} (rpc of virtengine-node-0)" in str(caught.value)
    assert "network.json" in str(caught.value)


def test_changed_settings_are_rejected(make_localnet):
    make_localnet(validators=1).up()
    config = LabConfig(home=make_localnet(validators=1).config.home, validators=3, time_scale=0.1, classic_ports=False)

    with pytest.raises(LocalnetError) as caught:
        Localnet(config).up()

    assert "validators=1" in str(caught.value)
    assert "validators=3" in str(caught.value)


def test_lock_held_elsewhere_times_out(make_localnet, monkeypatch):
    localnet = make_localnet(validators=1)
    lock_path = localnet.config.localnet_dir / ".lock"
    lock_path.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
        "f.write('pid 1: test holder'); f.flush(); print('locked', flush=True); time.sleep(30)"
    ), str(lock_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(supervisor, "LOCK_TIMEOUT", 0.3)
        with pytest.raises(LocalnetError) as caught:
            localnet.up()
    finally:
        holder.kill()
        holder.wait(5)

    assert str(lock_path) in str(caught.value)
    assert "test holder" in str(caught.value)
    assert localnet.network() is None


def test_unknown_validator_lists_known_names(make_localnet):
    localnet = make_localnet()
    localnet.up()

    with pytest.raises(TargetNotFound) as caught:
        localnet.start_service("virtengine-node-7")

    assert "'virtengine-node-7'" in str(caught.value)
    assert "virtengine-node-0, virtengine-node-1" in str(caught.value)


def test_tail_lines_reads_from_the_end(tmp_path):
    path = tmp_path / "big.log"
    path.write_text("".join(f"line {i}\n" for i in range(50_000)))

    assert tail_lines(path, 3) == ["line 49997", "line 49998", "line 49999"]
    assert tail_lines(path, 0) == []
    assert len(tail_lines(path, None)) == 50_000
    assert tail_lines(tmp_path / "missing.log", 5) == []


@pytest.mark.integration
def test_real_validators_under_supervisor(tmp_path):
    config = LabConfig(home=tmp_path / "lab", validators=4, time_scale=0.1, classic_ports=False)
    localnet = Localnet(config)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        services = localnet.up()
        assert [s["kind"] for s in services] == ["validator"] * 4 + ["gateway", "client", "veid", "cluster"]
        assert [s["status"] for s in services] == ["running"] * 8
        for service in services[:4]:
            assert get_health(service["rpc"]) == {"jsonrpc": "2.0", "id": -1, "result": {}}
            node_info = json.loads(opener.open(f"{service['rpc']}/status", timeout=2).read())["result"]["node_info"]
            assert node_info["moniker"] == service["name"]
            assert node_info["network"] == config.chain_id

        # A paused validator accepts the connection and never responds.
        localnet.signal_service("virtengine-node-3", signal.SIGSTOP)
        assert wait_until(lambda: localnet.services()[3]["status"] == "paused", 2)
        assert health_read_times_out(services[3]["rpc"])

        # down() resumes it first, so every process handles SIGTERM and exits 0.
        assert [s["exit_code"] for s in localnet.down()] == [0] * 7
    finally:
        localnet.down(timeout=0)
        kill_recorded_processes(localnet.run_dir)


def test_new_localnet_repicks_busy_port(tmp_path):
    """A port taken by another program between the pick and the bind leads to new ports, not an error."""
    import socket as _socket

    from incidentlab.backends.local import LocalBackend
    from incidentlab.localnet import network as network_module

    config = LabConfig(home=tmp_path / "lab", validators=2, time_scale=0.1, classic_ports=False)
    blocker = _socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    original = network_module._pick_port
    calls = []

    def pick_taken_first(wanted, used):
        calls.append(wanted)
        if len(calls) == 1:
            used.add(taken)
            return taken
        return original(wanted, used)

    network_module._pick_port = pick_taken_first
    backend = LocalBackend(config)
    try:
        backend.up()
        ports = [port for spec in backend.network().validators for port in spec.ports.values()]
        assert taken not in ports
        assert all(s["status"] == "running" for s in backend.services())
    finally:
        network_module._pick_port = original
        backend.down()
        blocker.close()


def test_stopped_lab_keeps_its_ports(make_localnet):
    first = make_localnet("lab-a", classic_ports=True)
    first.up()
    first.down()  # nothing listens on its ports now, yet they stay this lab's
    second = make_localnet("lab-b", classic_ports=True)
    second.up()

    assert not set(first.network().ports()) & set(second.network().ports())


def test_port_claims_of_a_deleted_lab_lapse(tmp_path, monkeypatch):
    from incidentlab.localnet import portclaims

    monkeypatch.setenv(portclaims.CLAIMS_ENV, str(tmp_path / "claims"))
    owner, other = tmp_path / "a" / "network.json", tmp_path / "b" / "network.json"
    owner.parent.mkdir()
    owner.write_text("{}")
    assert portclaims.claim([21001, 21002], owner) == []
    assert portclaims.claim([21002, 21003], other) == [21002]
    assert portclaims.claimed_ports(other) == {21001, 21002}
    owner.unlink()
    assert portclaims.claimed_ports(other) == set()
    assert portclaims.claim([21002], other) == []

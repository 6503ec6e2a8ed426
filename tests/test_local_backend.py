"""LocalBackend on real processes: Docker's rules for pause, unpause, stop, kill, start, restart, inspect, logs."""

from __future__ import annotations

import logging
import re
import socket

import pytest

from conftest import command_line, health_read_times_out
from incidentlab.backends.local import LocalBackend, human_duration
from incidentlab.errors import ConfigError, TargetNotFound, TargetStateError
from incidentlab.localnet.shim import ZERO_TIME
from incidentlab.localnet.supervisor import wait_until

NODE0, NODE1 = "virtengine-node-0", "virtengine-node-1"
STATE_KEYS = {"Status", "Running", "Paused", "Restarting", "OOMKilled", "Dead", "Pid", "ExitCode", "Error", "StartedAt", "FinishedAt"}
LOG_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ")


@pytest.fixture
def backend(make_localnet):
    """A LocalBackend over two running fake validators."""
    localnet = make_localnet(extra_args={NODE1: ["--ignore-sigterm"]})
    backend = LocalBackend(localnet.config, localnet=localnet)
    backend.up()
    return backend


def responds_to_health(backend: LocalBackend, name: str) -> bool:
    return not health_read_times_out(backend.endpoints()[name]["rpc"], timeout=2.0)


def test_targets_table_like_docker_ps(backend):
    table = backend.targets()
    rpc_port = backend.localnet.network().validator(NODE0).ports["rpc"]

    assert list(table.columns) == ["NAME", "KIND", "STATUS", "PID", "PORTS"]
    assert list(table["NAME"]) == [NODE0, NODE1]
    assert set(table["KIND"]) == {"validator"}
    assert all(re.fullmatch(r"Up (Less than a second|\d+ seconds?)", status) for status in table["STATUS"])
    assert all(pid > 0 for pid in table["PID"])
    assert table.loc[0, "PORTS"].startswith(f"127.0.0.1:{rpc_port}->rpc, ")
    assert "->metrics" in table.loc[0, "PORTS"]
    assert "->p2p" in table.loc[0, "PORTS"]


def test_inspect_running_state(backend):
    state = backend.inspect(NODE0)

    assert set(state) == STATE_KEYS
    assert state["Status"] == "running"
    assert state["Running"] is True
    assert state["Paused"] is False
    assert state["Pid"] == backend.localnet.state(NODE0)["pid"]
    assert state["FinishedAt"] == ZERO_TIME


def test_pause_freezes_and_unpause_restores(backend):
    paused = backend.pause(NODE0)

    assert paused["Status"] == "paused"
    assert paused["Running"] is True
    assert paused["Paused"] is True
    assert backend.targets().loc[0, "STATUS"].endswith("(Paused)")
    # The kernel still accepts TCP connections for a frozen process, but no response comes.
    assert health_read_times_out(backend.endpoints()[NODE0]["rpc"], timeout=0.3)

    resumed = backend.unpause(NODE0)

    assert resumed["Status"] == "running"
    assert resumed["Paused"] is False
    assert resumed["Pid"] == paused["Pid"]
    assert responds_to_health(backend, NODE0)


def test_pause_twice_is_rejected(backend):
    backend.pause(NODE0)

    with pytest.raises(TargetStateError) as caught:
        backend.pause(NODE0)

    assert caught.value.status == "paused"
    assert f"target {NODE0} is already paused" in str(caught.value)
    assert f"unpause('{NODE0}')" in str(caught.value)


def test_unpause_of_running_is_rejected(backend):
    with pytest.raises(TargetStateError) as caught:
        backend.unpause(NODE0)

    assert f"target {NODE0} is not paused (status running)" in str(caught.value)


def test_stop_refuses_connections(backend):
    port = backend.localnet.network().validator(NODE0).ports["rpc"]
    state = backend.stop(NODE0)

    assert state["Status"] == "exited"
    assert state["Running"] is False
    assert state["Pid"] == 0
    assert state["ExitCode"] == 0  # the fake node handles SIGTERM
    assert state["FinishedAt"] != ZERO_TIME
    assert re.fullmatch(r"Exited \(0\) (Less than a second|\d+ seconds?) ago", backend.targets().loc[0, "STATUS"])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_stop_escalates_to_sigkill_after_grace(backend):
    state = backend.stop(NODE1, timeout=2)

    assert state["ExitCode"] == 137
    assert "received SIGTERM" in backend.logs(NODE1)


def test_stop_of_paused_target(backend):
    backend.pause(NODE0)

    assert backend.stop(NODE0)["ExitCode"] == 0


def test_stop_of_exited_is_noop(backend):
    first = backend.stop(NODE0)

    assert backend.stop(NODE0) == first


def test_actions_on_exited_target_are_rejected(backend):
    backend.stop(NODE0)

    for action in (backend.pause, backend.kill):
        with pytest.raises(TargetStateError) as caught:
            action(NODE0)
        assert "not running (status exited)" in str(caught.value)
        assert f"start('{NODE0}')" in str(caught.value)
    with pytest.raises(TargetStateError, match="not paused"):
        backend.unpause(NODE0)


def test_start_after_stop_keeps_ports(backend):
    endpoints = backend.endpoints()[NODE0]
    old_pid = backend.inspect(NODE0)["Pid"]
    backend.stop(NODE0)

    state = backend.start(NODE0)

    assert state["Status"] == "running"
    assert state["Pid"] not in (0, old_pid)
    assert backend.endpoints()[NODE0] == endpoints
    assert responds_to_health(backend, NODE0)


def test_start_of_running_is_noop(backend):
    before = backend.inspect(NODE0)

    assert backend.start(NODE0) == before


def test_start_of_paused_is_rejected(backend):
    backend.pause(NODE0)

    with pytest.raises(TargetStateError, match=r"use unpause\('virtengine-node-0'\)"):
        backend.start(NODE0)


@pytest.mark.parametrize("signal", ["SIGKILL", "KILL", "kill", 9, "9"])
def test_kill_accepts_names_and_numbers(backend, signal):
    pid = backend.inspect(NODE0)["Pid"]
    state = backend.kill(NODE0, signal=signal)

    assert state["Status"] == "exited"
    assert state["ExitCode"] == 137
    assert command_line(pid) is None


def test_kill_of_paused_target(backend):
    backend.pause(NODE0)

    state = backend.kill(NODE0)

    assert state["Status"] == "exited"
    assert state["ExitCode"] == 137


def test_kill_with_sigterm_lets_target_exit(backend):
    backend.kill(NODE0, signal="SIGTERM")

    # Like `docker kill`, the call does not wait for a signal that the process may handle.
    assert wait_until(lambda: backend.inspect(NODE0)["Status"] == "exited", 5)
    assert backend.inspect(NODE0)["ExitCode"] == 0


def test_kill_with_unknown_signal_names_value(backend):
    with pytest.raises(ConfigError) as caught:
        backend.kill(NODE0, signal="SIGFOO")

    assert "'SIGFOO'" in str(caught.value)
    assert backend.inspect(NODE0)["Running"] is True


def test_restart_gives_new_pid_same_ports(backend):
    before = backend.inspect(NODE0)
    endpoints = backend.endpoints()

    after = backend.restart(NODE0)

    assert after["Status"] == "running"
    assert after["Pid"] != before["Pid"]
    assert backend.endpoints() == endpoints


def test_logs_tail_and_timestamps(backend):
    stamped = backend.logs(NODE0, tail=2, timestamps=True).splitlines()
    plain = backend.logs(NODE0, tail="all")

    assert len(stamped) == 2
    assert all(LOG_TIMESTAMP.match(line) for line in stamped)
    assert plain.splitlines()[0].startswith(f"INFO fake_node: starting {NODE0}")
    assert not LOG_TIMESTAMP.match(plain)
    assert backend.logs(NODE0, tail=0) == ""


def test_logs_with_invalid_tail_names_value(backend):
    with pytest.raises(ConfigError, match="tail=-1"):
        backend.logs(NODE0, tail=-1)


@pytest.mark.parametrize("name", ["virtengine-node-9", "postgres"])
def test_unknown_target_lists_known_names(backend, name):
    with pytest.raises(TargetNotFound) as caught:
        backend.pause(name)

    assert repr(name) in str(caught.value)
    assert caught.value.known == [NODE0, NODE1]


def test_actions_log_name_and_pid(backend, caplog):
    pid = backend.inspect(NODE0)["Pid"]
    with caplog.at_level(logging.INFO, logger="incidentlab.backends.local"):
        backend.pause(NODE0)
        backend.unpause(NODE0)

    lines = [record.getMessage() for record in caplog.records if record.name == "incidentlab.backends.local"]
    assert lines == [
        f"sent SIGSTOP to target {NODE0} pid={pid}, now paused",
        f"sent SIGCONT to target {NODE0} pid={pid}, now running",
    ]


def test_up_down_and_is_up(backend):
    assert backend.is_up()

    services = backend.down(timeout=1)

    assert [s["status"] for s in services] == ["exited", "exited"]
    assert not backend.is_up()


@pytest.mark.parametrize(("seconds", "text"), [
    (0.4, "Less than a second"), (1, "1 second"), (16, "16 seconds"), (60, "About a minute"),
    (150, "2 minutes"), (3600, "About an hour"), (5400, "2 hours"), (3 * 86400, "3 days"),
])
def test_human_duration_like_docker(seconds, text):
    assert human_duration(seconds) == text

"""Faults on the local backend: effect seen from outside, rollback verified, nothing left after a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import requests

from incidentlab import Lab
from incidentlab.chaos.journal import Journal
from incidentlab.errors import ConfigError, TargetNotFound

TARGET = "virtengine-node-2"


@pytest.fixture
def lab(tmp_path):
    lab = Lab.connect("local", home=tmp_path / "lab", time_scale=0.1)
    try:
        yield lab
    finally:
        try:
            lab.halt()
        finally:
            lab.down()  # even when an undo failed, no process or container outlives the test


def rpc(lab, name=TARGET):
    return lab.endpoints()[name] + "/status"


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def journal_states(lab):
    return {entry["id"]: entry["state"] for entry in Journal(lab.config.home).entries()}


def test_pause_freezes_and_reverts(lab):
    with lab.fault("pause", TARGET) as fault:
        state = lab.inspect(TARGET)
        assert (state["Running"], state["Paused"]) == (True, True)
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(rpc(lab), timeout=0.5)
        assert journal_states(lab)[fault.id] == "active"
    assert lab.inspect(TARGET)["Status"] == "running"
    assert requests.get(rpc(lab), timeout=2).status_code == 200
    assert journal_states(lab)[fault.id] == "reverted"


def test_pause_reverted_on_exception(lab):
    with pytest.raises(RuntimeError, match="boom"):
        with lab.fault("pause", TARGET):
            raise RuntimeError("boom")
    assert lab.inspect(TARGET)["Status"] == "running"


def test_stop_and_kill_refuse_then_recover(lab):
    with lab.fault("stop", TARGET):
        assert lab.inspect(TARGET)["ExitCode"] == 0
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(rpc(lab), timeout=1)
    assert lab.inspect(TARGET)["Status"] == "running"
    with lab.fault("kill", TARGET):
        assert lab.inspect(TARGET)["ExitCode"] == 137
    assert lab.inspect(TARGET)["Status"] == "running"


def test_restart_leaves_target_running(lab):
    before = lab.inspect(TARGET)["Pid"]
    with lab.fault("restart", TARGET):
        assert lab.inspect(TARGET)["Pid"] != before
    assert lab.inspect(TARGET)["Status"] == "running"


def test_pause_cycle_ends_unpaused(lab):
    fault = lab.fault("pause-cycle", TARGET, cycles=2, paused=2.0, running=1.0).inject()
    assert wait_for(lambda: lab.inspect(TARGET)["Paused"], timeout=2)
    assert fault.wait(timeout=10)
    assert lab.inspect(TARGET)["Status"] == "running"
    assert journal_states(lab)[fault.id] == "reverted"


def test_cpu_stress_workers_end(lab):
    fault = lab.fault("cpu-stress", TARGET, duration=30, workers=1).inject()
    pid = fault.entry["undo"][0]["pid"]
    os.kill(pid, 0)  # the worker runs
    assert fault.revert()
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z")


def test_dry_run_changes_nothing(lab):
    fault = lab.fault("stop", TARGET, dry_run=True)
    assert any("stop virtengine-node-2" in step for step in fault.plan())
    fault.inject()
    assert lab.inspect(TARGET)["Status"] == "running"
    assert journal_states(lab) == {}


def test_bad_fault_values_are_named(lab):
    with pytest.raises(ConfigError, match="cycles=0"):
        lab.fault("pause-cycle", TARGET, cycles=0)
    with pytest.raises(ConfigError, match="duration=-5"):
        lab.fault("cpu-stress", TARGET, duration=-5)
    with pytest.raises(ConfigError, match="unknown fault kind 'flood'"):
        lab.fault("flood", TARGET)
    with pytest.raises(TargetNotFound, match="postgres"):
        lab.fault("pause", "postgres")


CHILD = textwrap.dedent("""
    import sys, time
    from incidentlab import Lab
    lab = Lab.connect("local", home=sys.argv[1])
    fault = lab.fault(sys.argv[2], sys.argv[3]).inject()
    print(fault.id, flush=True)
    time.sleep(60)
""")


def inject_in_child(lab, kind):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(lab.config.home), kind, TARGET],
                             stdout=subprocess.PIPE, text=True)
    fault_id = child.stdout.readline().strip()
    assert fault_id.startswith(kind), fault_id
    return child, fault_id


@pytest.mark.parametrize("kind", ["pause", "stop", "kill"])
def test_sigkilled_injector_cleaned_up(lab, kind):
    child, fault_id = inject_in_child(lab, kind)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert lab.inspect(TARGET)["Status"] != "running"  # the fault outlived its process

    env = {**os.environ, "INCIDENTLAB_HOME": str(lab.config.home)}
    result = subprocess.run([sys.executable, "-m", "incidentlab", "cleanup"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert fault_id in result.stdout
    assert lab.inspect(TARGET)["Status"] == "running"
    assert journal_states(lab)[fault_id] == "reverted"


def test_connect_reverts_orphaned_fault(lab):
    child, fault_id = inject_in_child(lab, "pause")
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    Lab.connect("local", home=lab.config.home)
    assert lab.inspect(TARGET)["Status"] == "running"
    entry = Journal(lab.config.home).read(fault_id)
    assert entry["state"] == "reverted"
    assert "is gone" in entry["note"]


def test_sigterm_reverts_before_exit(lab):
    child, fault_id = inject_in_child(lab, "pause")
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=20) == 143
    assert lab.inspect(TARGET)["Status"] == "running"
    assert journal_states(lab)[fault_id] == "reverted"


def cli(lab, *args):
    env = {**os.environ, "INCIDENTLAB_HOME": str(lab.config.home)}
    return subprocess.run([sys.executable, "-m", "incidentlab", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_chaos_command_pause_unpause(lab):
    result = cli(lab, "chaos", "pause", TARGET)
    assert result.returncode == 0, result.stderr
    assert lab.inspect(TARGET)["Paused"]  # a detached fault stays after the command exits
    Lab.connect("local", home=lab.config.home)
    assert lab.inspect(TARGET)["Paused"]  # and connect() leaves it alone
    assert cli(lab, "chaos", "unpause", TARGET).returncode == 0
    assert lab.inspect(TARGET)["Status"] == "running"
    assert set(journal_states(lab).values()) == {"reverted"}


def test_chaos_command_kill_restart_halt(lab):
    assert cli(lab, "chaos", "kill", TARGET).returncode == 0
    assert lab.inspect(TARGET)["Status"] == "exited"
    assert cli(lab, "chaos", "restart", TARGET).returncode == 0
    assert lab.inspect(TARGET)["Status"] == "running"
    assert cli(lab, "chaos", "pause", "virtengine-node-1").returncode == 0
    assert cli(lab, "chaos", "halt").returncode == 0
    assert lab.inspect("virtengine-node-1")["Status"] == "running"
    journal = cli(lab, "chaos", "journal").stdout
    assert "pause" in journal and "reverted" in journal


def test_chaos_command_errors(lab):
    result = cli(lab, "chaos", "pause", "virtengine-node-9")
    assert result.returncode == 2
    assert "no target named 'virtengine-node-9'" in result.stderr
    result = cli(lab, "chaos", "cpu-stress", TARGET, "soon")
    assert result.returncode == 2
    assert "invalid duration 'soon'" in result.stderr
    dry = cli(lab, "chaos", "--dry-run", "kill", TARGET)
    assert "would stop virtengine-node-2" in dry.stdout
    assert lab.inspect(TARGET)["Status"] == "running"


def median_latency(url, count=7):
    session = requests.Session()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        session.get(url + "/status", timeout=5)
        samples.append(time.perf_counter() - started)
    return sorted(samples)[count // 2]


def proxies_running():
    found = subprocess.run(["pgrep", "-f", "incidentlab.chaos.proxy"], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def test_latency_proxy_adds_delay_and_reverts(lab):
    direct = median_latency(lab.endpoints()[TARGET])
    with lab.fault("latency", TARGET, delay=0.05) as fault:
        routed_url = lab.endpoints()[TARGET]
        ports = lab.targets().set_index("NAME").loc[TARGET, "PORTS"]
        assert f"{routed_url.split(':')[-1]}->rpc (via latency proxy)" in ports
        assert routed_url != lab.status()["services"][2]["direct_rpc"]
        # Both directions are delayed, so a round trip gains about twice the delay.
        assert median_latency(routed_url) - direct >= 0.09
    assert median_latency(lab.endpoints()[TARGET]) < 0.05
    assert "direct_rpc" not in lab.status()["services"][2]
    assert "stopped proxy" in Journal(lab.config.home).read(fault.id)["note"]


def test_latency_left_by_killed_process_is_cleaned(lab):
    before = set(proxies_running())
    child, fault_id = inject_in_child(lab, "latency")
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert set(proxies_running()) - before  # the proxies outlived their process
    assert cli(lab, "cleanup").returncode == 0
    assert not set(proxies_running()) - before
    assert not (lab.config.localnet_dir / "routes.json").exists() or TARGET not in json.loads(
        (lab.config.localnet_dir / "routes.json").read_text())
    assert journal_states(lab)[fault_id] == "reverted"


def test_netem_on_local_backend_says_use_proxy(lab):
    from incidentlab.errors import FaultError

    fault = lab.fault("latency", TARGET, delay=0.1, method="netem")
    with pytest.raises(FaultError, match=r"netem latency is not possible.*method='proxy'"):
        fault.inject()
    assert lab.inspect(TARGET)["Status"] == "running"
    assert journal_states(lab)[fault.id] == "reverted"


def test_chaos_command_latency(lab):
    assert cli(lab, "chaos", "latency", TARGET, "80ms").returncode == 0
    assert median_latency(lab.endpoints()[TARGET]) >= 0.15
    assert cli(lab, "chaos", "latency-remove", TARGET).returncode == 0
    assert median_latency(lab.endpoints()[TARGET]) < 0.05


def test_fault_lands_in_simulation_timeline(lab):
    sim = lab.simulation("node-down", seed=2)
    sim.inject()
    try:
        with lab.fault("pause", "virtengine-node-0") as fault:
            pass
        events = [e for e in sim.incident.timeline if e.data.get("fault_id") == fault.id]
        assert [e.kind for e in events] == ["fault_injected", "fault_reverted"]
        assert events[0].source == "chaos"
        assert events[0].time <= events[1].time
    finally:
        sim.close()


def test_expired_latency_proxy_stops_routing(lab):
    # 4 s at time_scale 0.1: long enough to see the route on a loaded machine, short enough to wait for.
    fault = lab.fault("latency", TARGET, delay=0.05, duration=40).inject()
    assert "direct_rpc" in lab.status()["services"][2]
    assert wait_for(lambda: "direct_rpc" not in lab.status()["services"][2], timeout=20)
    assert median_latency(lab.endpoints()[TARGET]) < 0.05
    assert fault.revert()

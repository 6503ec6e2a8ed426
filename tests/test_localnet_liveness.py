"""Consensus liveness of a real 4-validator localnet while validators are stopped, paused and restarted.

Each test breaks its own localnet in its own tmp lab home and stops every process at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import kill_recorded_processes
from incidentlab.backends.local import LocalBackend
from incidentlab.config import LabConfig

pytestmark = pytest.mark.integration

VALIDATORS = 4
TIME_SCALE = 0.1
HEALTH_BODY = {"jsonrpc": "2.0", "id": -1, "result": {}}
#: Client read timeout in seconds, so that a frozen validator costs each check half a second.
READ_TIMEOUT = 0.5
BLOCK_ID_FLAG_COMMIT = 2
ABSENT_SIGNATURE = {"block_id_flag": 1, "validator_address": "", "timestamp": "0001-01-01T00:00:00Z", "signature": None}
#: Blocks a stopped validator misses before its restart, so that block sync has work to do.
MISSED_BLOCKS = 20


@pytest.fixture
def http():
    """A requests session that ignores proxy settings, so every request stays on 127.0.0.1."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


@pytest.fixture
def localnet(tmp_path, http):
    """A running 4-validator localnet past height 3; yields (backend, network), stops every process after."""
    config = LabConfig(home=tmp_path / "lab", validators=VALIDATORS, time_scale=TIME_SCALE, classic_ports=False)
    backend = LocalBackend(config)
    try:
        backend.up()
        network = backend.localnet.network()
        wait_for(lambda: min(latest_height(http, spec) for spec in network.validators) >= 3,
                 timeout=30, description="every validator at height 3 or more")
        yield backend, network
    finally:
        try:
            backend.down()
        finally:
            kill_recorded_processes(backend.localnet.run_dir)


# -- helpers -------------------------------------------------------------------------


def wait_for(condition, *, timeout: float, description: str, interval: float = 0.05):
    """Call ``condition`` until it returns a truthy value and return that value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {description}; last value {value!r}")
        time.sleep(interval)


def sync_info(http, spec) -> dict:
    response = http.get(f"{spec.rpc_url}/status", timeout=2)
    assert response.status_code == 200, response.text
    return response.json()["result"]["sync_info"]


def latest_height(http, spec) -> int:
    return int(sync_info(http, spec)["latest_block_height"])


def get_block(http, spec, height: int) -> dict:
    response = http.get(f"{spec.rpc_url}/block", params={"height": str(height)}, timeout=2)
    assert response.status_code == 200, response.text
    return response.json()["result"]["block"]


def metric(http, spec, name: str) -> float:
    """Return the value of the single sample ``name`` in a validator's /metrics."""
    text = http.get(spec.metrics_url, timeout=2).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    pytest.fail(f"{name} not found in {spec.metrics_url}")


def health(http, spec) -> dict:
    return http.get(f"{spec.rpc_url}/health", timeout=2).json()


class StartupRecorder(threading.Thread):
    """Call ``probe(session)`` every few milliseconds, from before a validator's start until ``stop()``.

    ``observations`` gets each result in time order. Failed requests are skipped, because the
    validator is not up yet.
    """

    def __init__(self, name: str, probe):
        super().__init__(name=f"recorder-{name}", daemon=True)
        self.probe = probe
        self.observations: list = []
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._session = requests.Session()
        self._session.trust_env = False

    def run(self) -> None:
        try:
            self._poll()
        except BaseException as exc:  # re-raised by stop(), in the test's thread
            self.error = exc

    def stop(self) -> None:
        """Stop polling; raise what failed in the polling thread, if anything did."""
        self._stopping.set()
        self.join(5)
        self._session.close()
        if self.error is not None:
            raise self.error

    def _poll(self) -> None:
        while not self._stopping.is_set():
            try:
                self.observations.append(self.probe(self._session))
            except requests.RequestException:
                pass
            time.sleep(0.005)


# -- stopped and paused validators -----------------------------------------------------


def test_stopped_validator_refuses_connections(localnet, http):
    backend, network = localnet
    victim, *others = reversed(network.validators)

    backend.stop(victim.name)

    for url in (f"{victim.rpc_url}/health", victim.metrics_url):
        with pytest.raises(requests.ConnectionError) as refused:
            http.get(url, timeout=READ_TIMEOUT)
        assert not isinstance(refused.value, requests.Timeout), refused.value
    for spec in others:
        assert health(http, spec) == HEALTH_BODY


def test_paused_validator_accepts_tcp_and_times_out(localnet, http):
    backend, network = localnet
    victim = network.validators[2]
    others = [spec for spec in network.validators if spec is not victim]

    backend.pause(victim.name)
    try:
        # The kernel completes the TCP handshake for the frozen process, but no thread reads the request.
        with socket.create_connection(("127.0.0.1", victim.ports["rpc"]), timeout=READ_TIMEOUT):
            pass
        with pytest.raises(requests.ReadTimeout):
            http.get(f"{victim.rpc_url}/health", timeout=READ_TIMEOUT)
        for spec in others:
            assert health(http, spec) == HEALTH_BODY
    finally:
        backend.unpause(victim.name)

    wait_for(lambda: health(http, victim) == HEALTH_BODY,
             timeout=5, description=f"/health of {victim.name} after unpause")


# -- quorum ----------------------------------------------------------------------------


def test_one_of_four_stopped_chain_advances(localnet, http):
    backend, network = localnet
    victim = network.validators[3]
    live = [spec for spec in network.validators if spec is not victim]

    backend.stop(victim.name)
    stopped_at = max(latest_height(http, spec) for spec in live)
    wait_for(lambda: min(latest_height(http, spec) for spec in live) >= stopped_at + 5,
             timeout=20, description=f"the 3 live validators past height {stopped_at + 5}")

    # The victim's last precommit is for stopped_at + 1 at the latest, so commits of later
    # heights (in the last_commit of blocks from stopped_at + 3 on) must show it absent.
    for height in range(stopped_at + 3, stopped_at + 6):
        signatures = get_block(http, live[0], height)["last_commit"]["signatures"]
        # CometBFT leaves an absent entry empty, so only its position identifies the validator.
        assert signatures[victim.index] == ABSENT_SIGNATURE, (height, signatures)
        for spec in live:
            assert signatures[spec.index]["block_id_flag"] == BLOCK_ID_FLAG_COMMIT, (height, signatures)
            assert signatures[spec.index]["validator_address"] == spec.address

    wait_for(lambda: metric(http, live[0], "cometbft_consensus_missing_validators") == 1,
             timeout=5, description="cometbft_consensus_missing_validators == 1")
    assert metric(http, live[0], "cometbft_consensus_missing_validators_power") == 10


def test_two_of_four_stopped_chain_halts_and_resumes(localnet, http):
    backend, network = localnet
    live, stopped = network.validators[:2], network.validators[2:]

    for spec in stopped:
        backend.stop(spec.name)
    # Round 2 at one height means that a block in flight at the stops has been stored by now.
    wait_for(lambda: metric(http, live[0], "cometbft_consensus_rounds") >= 2,
             timeout=10, description="cometbft_consensus_rounds >= 2 after the halt")
    frozen = {spec.name: sync_info(http, spec) for spec in live}
    rounds_at_halt = metric(http, live[0], "cometbft_consensus_rounds")

    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        for spec in live:
            now = sync_info(http, spec)
            assert now["latest_block_height"] == frozen[spec.name]["latest_block_height"], spec.name
            assert now["latest_block_time"] == frozen[spec.name]["latest_block_time"], spec.name
            assert now["catching_up"] is False
            assert health(http, spec) == HEALTH_BODY
        time.sleep(0.1)
    assert metric(http, live[0], "cometbft_consensus_rounds") > max(rounds_at_halt, 1)

    halted_at = max(int(info["latest_block_height"]) for info in frozen.values())
    for spec in stopped:
        backend.start(spec.name)
    wait_for(lambda: min(latest_height(http, spec) for spec in network.validators) >= halted_at + 3,
             timeout=30, description=f"all 4 validators past height {halted_at + 3} after the restart")


# -- restart and block sync ------------------------------------------------------------


def test_restarted_validator_catches_up(localnet, http):
    backend, network = localnet
    victim, *peers = reversed(network.validators)
    status_before = http.get(f"{victim.rpc_url}/status", timeout=2).json()["result"]
    height_before = int(status_before["sync_info"]["latest_block_height"])

    backend.stop(victim.name)
    wait_for(lambda: min(latest_height(http, spec) for spec in peers) >= height_before + MISSED_BLOCKS,
             timeout=30, description=f"the 3 live validators {MISSED_BLOCKS} blocks past the stop")

    # /status and /metrics get a thread each, because block sync of MISSED_BLOCKS takes only
    # about 0.1 s on an idle machine.
    statuses = StartupRecorder("status", lambda session: sync_info(session, victim))
    syncing = StartupRecorder("syncing", lambda session: metric(session, victim, "cometbft_blocksync_syncing"))
    for recorder in (statuses, syncing):
        recorder.start()
    try:
        backend.start(victim.name)

        def caught_up():
            info = sync_info(http, victim)
            synced = not info["catching_up"] and metric(http, victim, "cometbft_blocksync_syncing") == 0
            best = max(latest_height(http, spec) for spec in peers)
            return synced and abs(int(info["latest_block_height"]) - best) <= 1

        wait_for(caught_up, timeout=20, description=f"{victim.name} synced and within 1 block of its peers")
    finally:
        for recorder in (statuses, syncing):
            recorder.stop()

    assert statuses.observations, f"no response from {victim.name} after its start"
    catching_up = [info["catching_up"] for info in statuses.observations]
    assert True in catching_up, "catching_up was never true after the restart"
    assert False in catching_up, "catching_up never turned false after the restart"
    assert 1 in syncing.observations, f"cometbft_blocksync_syncing was never 1 after the restart: {syncing.observations}"
    # After the switch to consensus, catching_up never turns true again.
    assert True not in catching_up[catching_up.index(False):]

    # The stored blocks survive the restart: no gap back to an empty store.
    assert int(statuses.observations[0]["latest_block_height"]) >= height_before
    assert {info["earliest_block_height"] for info in statuses.observations} == {"1"}

    status_after = http.get(f"{victim.rpc_url}/status", timeout=2).json()["result"]
    assert status_after["node_info"]["listen_addr"] == status_before["node_info"]["listen_addr"]
    assert status_after["node_info"]["other"]["rpc_address"] == status_before["node_info"]["other"]["rpc_address"]


def test_validators_exit_when_lab_home_removed(tmp_path):
    """A deleted lab home (a wiped temporary folder) leaves no validator running as an orphan."""
    import shutil

    from incidentlab import Lab

    lab = Lab.connect("local", home=tmp_path / "lab", time_scale=0.1)
    pids = [service["pid"] for service in lab.status()["services"]]
    try:
        shutil.rmtree(tmp_path / "lab")

        def running(pid):
            try:
                with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
                    return handle.read().rpartition(")")[2].split()[0] != "Z"
            except OSError:
                return False

        deadline = time.monotonic() + 10
        while any(running(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in pids if running(pid)]
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

"""DockerBackend on a real Docker engine: four validator containers on the host network, real faults, real RPC.

Skipped when no engine can be reached, except when CI=true: then a missing engine or image fails the run.
`.ci/docker-setup.sh` starts the engine and builds the image offline.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading

import docker
import pytest

from incidentlab.backends import docker as docker_backend
from incidentlab.backends.docker import HOME_LABEL, PACKAGE_MOUNT, DockerBackend
from incidentlab.backends.docker_image import IMAGE, debian_mirror, engine_client, image_exists
from incidentlab.config import LabConfig
from incidentlab.errors import ConfigError, RPCConnectionRefused, RPCTimeout, TargetNotFound, TargetStateError
from incidentlab.localnet.supervisor import wait_until
from incidentlab.probes.rpc import CometBFTClient

pytestmark = pytest.mark.docker

NODES = [f"virtengine-node-{index}" for index in range(4)]
NODE1, NODE3 = NODES[1], NODES[3]
#: Every container of a lab, in services() order: the validators, then the gateway and the client.
#: The VEID service needs numpy and Pillow, which the image lacks, so the Docker backend leaves it out.
SERVICES = [*NODES, "virtengine-gateway", "virtengine-client", "virtengine-cluster"]
#: Seconds for a few blocks at time_scale 0.1 (a block takes about 0.1 s to 0.5 s there).
BLOCK_WAIT = 15.0
ENGINE_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z ")


def skip_or_fail(reason: str) -> None:
    """Skip the docker tests on a machine without an engine, but fail them in CI, which must run them."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so the docker tests must run: run `bash .ci/docker-setup.sh` as root first", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def engine():
    """A Docker client of a reachable engine that has the validator image."""
    try:
        client = engine_client(timeout=30)
    except ConfigError as exc:
        skip_or_fail(f"no Docker engine is reachable: {exc}")
    if not image_exists(client):
        skip_or_fail(f"the image {IMAGE} is missing; build it with `python -m incidentlab.backends.docker_image build`")
    yield client
    client.close()


@pytest.fixture
def make_backend(engine, tmp_path, request):
    """Build DockerBackends in their own tmp lab homes; their containers are always removed at teardown."""
    homes = []

    def remove_containers() -> None:
        for home in homes:
            for container in engine.containers.list(all=True, filters={"label": f"{HOME_LABEL}={home}"}):
                container.remove(force=True)

    request.addfinalizer(remove_containers)

    def make(home: str = "lab") -> DockerBackend:
        config = LabConfig(home=tmp_path / home, backend="docker", validators=4, time_scale=0.1, classic_ports=False)
        homes.append(config.home)
        return DockerBackend(config, client=engine)

    return make


@pytest.fixture
def lab(make_backend):
    """A DockerBackend whose four validator containers are up and healthy."""
    backend = make_backend()
    backend.up()
    return backend


def rpc(backend: DockerBackend, name: str, timeout: float = 2.0) -> CometBFTClient:
    return CometBFTClient(backend.endpoints()[name]["rpc"], timeout=timeout)


def height(backend: DockerBackend, name: str) -> int:
    with rpc(backend, name) as client:
        return client.status().latest_block_height


def advances(backend: DockerBackend, name: str, blocks: int = 2) -> bool:
    """Return True when the node's height grows by ``blocks`` within BLOCK_WAIT seconds."""
    start = height(backend, name)
    return wait_until(lambda: height(backend, name) >= start + blocks, BLOCK_WAIT)


def test_up_runs_four_validator_containers(lab, engine):
    for name in NODES:
        container = engine.containers.get(name)
        mounts = {mount["Destination"]: mount for mount in container.attrs["Mounts"]}

        assert lab.inspect(name)["Status"] == "running"
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        assert container.labels[HOME_LABEL] == str(lab.config.home)
        assert container.labels["incidentlab.role"] == "validator"
        assert mounts[PACKAGE_MOUNT]["RW"] is False
        assert mounts[str(lab.config.localnet_dir)]["RW"] is True
        assert advances(lab, name)


def test_up_when_running_changes_nothing(lab):
    pids = [lab.inspect(name)["Pid"] for name in SERVICES]

    services = lab.up()

    assert [service["name"] for service in services] == SERVICES
    assert [service["pid"] for service in services] == pids
    assert [service["status"] for service in services] == ["running"] * len(SERVICES)


def test_up_without_image_names_build_command(make_backend, monkeypatch):
    monkeypatch.setattr(docker_backend, "IMAGE", "incidentlab/validator:missing-for-test")
    monkeypatch.setattr(docker_backend, "image_exists", lambda client: image_exists(client, docker_backend.IMAGE))

    with pytest.raises(ConfigError, match=r"python -m incidentlab\.backends\.docker_image build"):
        make_backend().up()


def test_pause_freezes_and_unpause_resumes(lab):
    paused = lab.pause(NODE1)

    assert paused["Running"] is True
    assert paused["Paused"] is True
    assert paused["Status"] == "paused"
    assert lab.targets().set_index("NAME").loc[NODE1, "STATUS"].endswith("(Paused)")
    # The kernel still accepts the connection for a frozen container, but no response comes.
    with rpc(lab, NODE1, timeout=0.5) as client, pytest.raises(RPCTimeout):
        client.status()

    resumed = lab.unpause(NODE1)

    assert resumed["Paused"] is False
    assert resumed["Pid"] == paused["Pid"]
    assert advances(lab, NODE1)


def test_stop_exits_zero_and_refuses_connections(lab):
    state = lab.stop(NODE1)

    assert state["Status"] == "exited"
    assert state["Running"] is False
    assert state["ExitCode"] == 0  # the validator handles SIGTERM
    assert "received SIGTERM" in lab.logs(NODE1, tail=10)
    with rpc(lab, NODE1) as client, pytest.raises(RPCConnectionRefused):
        client.status()


def test_kill_exits_137(lab):
    state = lab.kill(NODE1)

    assert state["Status"] == "exited"
    assert state["ExitCode"] == 137
    assert state["Pid"] == 0


def test_start_catches_up_with_peers(lab):
    old_pid = lab.inspect(NODE3)["Pid"]
    lab.kill(NODE3)
    # Three of four equal validators still make a quorum, so the chain goes on without node 3.
    assert advances(lab, NODES[0], blocks=5)
    peers_height = height(lab, NODES[0])

    state = lab.start(NODE3)

    assert state["Status"] == "running"
    assert state["Pid"] not in (0, old_pid)
    assert wait_until(lambda: height(lab, NODE3) >= peers_height, BLOCK_WAIT)
    assert wait_until(lambda: height(lab, NODE3) >= height(lab, NODES[0]) - 1, BLOCK_WAIT)
    # Block sync hands over to consensus on its next tick, so catching_up turns false shortly after.
    with rpc(lab, NODE3) as client:
        assert wait_until(lambda: client.status().catching_up is False, BLOCK_WAIT)


def test_start_waits_for_port_held_by_client(lab, caplog):
    lab.stop(NODE3)
    metrics_port = lab.network().validator(NODE3).ports["metrics"]
    peer_rpc_port = lab.network().validator(NODES[0]).ports["rpc"]
    # A client connection whose local port is node 3's metrics port, as an ephemeral port can be.
    # Nothing scrapes that port here, so no connection of the stopped validator is left on it.
    client = socket.socket()
    try:
        client.bind(("127.0.0.1", metrics_port))
    except OSError as exc:
        # An earlier lab's connection on the same port number may still be in TIME_WAIT (60 s).
        client.close()
        pytest.skip(f"cannot stage the conflict: port {metrics_port} is still held ({exc})")
    client.connect(("127.0.0.1", peer_rpc_port))

    def release() -> None:
        # With "Connection: close" the server closes first, so the TIME_WAIT stays on its side.
        client.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        while client.recv(4096):
            pass
        client.close()

    timer = threading.Timer(1.0, release)
    timer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="incidentlab.backends.docker"):
            state = lab.start(NODE3)
    finally:
        timer.join()

    assert state["Status"] == "running"
    assert f"port {metrics_port} (metrics of {NODE3}) on 127.0.0.1 is in use" in caplog.text
    assert advances(lab, NODE3)


def test_targets_table_like_docker_ps(lab):
    table = lab.targets()
    rpc_port = lab.network().validator(NODES[0]).ports["rpc"]
    validators = table[table["KIND"] == "validator"].reset_index(drop=True)

    assert list(table.columns) == ["NAME", "KIND", "STATUS", "PID", "PORTS"]
    assert list(table["NAME"]) == sorted(SERVICES)
    assert list(validators["NAME"]) == NODES
    assert set(table["KIND"]) == {"validator", "gateway", "client", "cluster"}
    assert all(status.startswith("Up ") for status in table["STATUS"])
    assert list(table["PID"]) == [lab.inspect(name)["Pid"] for name in table["NAME"]]
    assert validators.loc[0, "PORTS"].startswith(f"127.0.0.1:{rpc_port}->rpc, ")


def test_targets_include_foreign_container(lab, engine, request):
    # A created, never started container: listed because its name contains "virtengine".
    foreign = engine.containers.create(IMAGE, command=["true"], name="test-virtengine-foreign", network_mode="none")
    request.addfinalizer(lambda: foreign.remove(force=True))

    table = lab.targets().set_index("NAME")

    assert table.loc["test-virtengine-foreign", "KIND"] == "container"
    assert table.loc["test-virtengine-foreign", "STATUS"] == "Created"
    assert lab.inspect("test-virtengine-foreign")["Status"] == "created"
    with pytest.raises(ConfigError, match="starts with 'virtengine-'"):
        lab.start("test-virtengine-foreign")
    assert [service["name"] for service in lab.down()] == SERVICES
    assert engine.containers.get("test-virtengine-foreign").status == "created"


def test_logs_contain_committed_blocks(lab):
    assert wait_until(lambda: "committed block" in lab.logs(NODE1, tail=20), BLOCK_WAIT)

    stamped = lab.logs(NODE1, tail=3, timestamps=True).splitlines()

    assert len(stamped) == 3
    assert all(ENGINE_TIMESTAMP.match(line) for line in stamped)
    assert lab.logs(NODE1, tail=0) == ""
    with pytest.raises(ConfigError, match="tail=-1 is invalid"):
        lab.logs(NODE1, tail=-1)


def test_stats_returns_numbers(lab):
    stats = lab.stats(NODE1)

    assert stats["name"] == NODE1
    assert isinstance(stats["cpu_percent"], float)
    assert stats["cpu_percent"] >= 0.0
    assert stats["memory_usage"] > 1_000_000  # a Python validator uses megabytes
    assert stats["memory_limit"] > stats["memory_usage"]
    assert 0.0 < stats["memory_percent"] < 100.0
    assert stats["pids"] >= 1


def test_unknown_name_raises_target_not_found(lab):
    for action in (lab.inspect, lab.pause, lab.logs):
        with pytest.raises(TargetNotFound) as caught:
            action("virtengine-node-9")
        assert caught.value.name == "virtengine-node-9"
        assert set(NODES) <= set(caught.value.known)


def test_unpause_of_running_keeps_engine_message(lab):
    container_id = lab.client.containers.get(NODE1).id

    with pytest.raises(TargetStateError) as caught:
        lab.unpause(NODE1)

    assert caught.value.status == "running"
    assert f"Container {container_id} is not paused" in str(caught.value)
    assert isinstance(caught.value.__cause__, docker.errors.APIError)


def test_pause_twice_and_kill_when_stopped_are_rejected(lab):
    lab.pause(NODE1)
    with pytest.raises(TargetStateError, match="is already paused") as caught:
        lab.pause(NODE1)
    assert caught.value.status == "paused"

    lab.stop(NODE1)
    with pytest.raises(TargetStateError, match="is not running") as caught:
        lab.kill(NODE1)
    assert caught.value.status == "exited"


def test_down_removes_lab_containers(lab, engine):
    services = lab.down()

    assert [service["status"] for service in services] == ["exited"] * len(SERVICES)
    assert [service["exit_code"] for service in services] == [0] * len(SERVICES)
    assert engine.containers.list(all=True, filters={"label": f"{HOME_LABEL}={lab.config.home}"}) == []
    assert lab.is_up() is False
    assert lab.down() == []


def test_debian_mirror_reads_both_source_formats(tmp_path):
    (tmp_path / "a.list").write_text("deb [arch=amd64] http://mirror.test/debian-security bookworm-security main\n")
    (tmp_path / "b.sources").write_text(
        "Types: deb\nURIs: http://mirror.test/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n"
    )

    assert debian_mirror((tmp_path,)) == "http://mirror.test/debian"
    with pytest.raises(ConfigError, match="no apt source serves Debian trixie"):
        debian_mirror((tmp_path,), suite="trixie")

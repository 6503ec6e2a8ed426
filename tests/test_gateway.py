"""The API gateway and the client load on real processes: REST shapes, the RPC proxy, 502/504 under faults, metrics.

One local lab at time_scale 0.1 serves the module; each fault is reverted before its test ends.
The Docker test is skipped without an engine, except when CI=true (then it fails).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from incidentlab import Lab
from incidentlab.config import LabConfig
from incidentlab.localnet.client import REQUEST_MIX, ClientLoad, client_timeout
from incidentlab.localnet.gateway import upstream_timeout
from incidentlab.localnet.network import create_network, load_network
from incidentlab.localnet.supervisor import wait_until
from test_validator_stdlib import run_python

NODE0 = "virtengine-node-0"
GATEWAY, CLIENT = "virtengine-gateway", "virtengine-client"
TIME_SCALE = 0.1
REST = "/cosmos/base/tendermint/v1beta1"
#: The gateway's upstream timeout at TIME_SCALE: 2 s scaled is under the 0.2 s floor.
GATEWAY_TIMEOUT = 0.2
#: Seconds the tests wait for a change that takes a few blocks or requests at TIME_SCALE.
WAIT = 10.0


@pytest.fixture(scope="module")
def http():
    """A requests session that ignores proxy settings, so every request stays on 127.0.0.1."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab.connect("local", home=tmp_path_factory.mktemp("gateway") / "lab", time_scale=TIME_SCALE)
    try:
        yield lab
    finally:
        try:
            lab.halt()
        finally:
            lab.down()


@pytest.fixture(scope="module")
def gateway(lab) -> dict:
    """The gateway's entry of lab.status(), once node 0 has left block sync and committed two blocks."""
    entry = next(service for service in lab.status()["services"] if service["kind"] == "gateway")
    with requests.Session() as session:
        session.trust_env = False
        assert wait_until(lambda: get_json(session, entry["rest"] + f"{REST}/syncing") == {"syncing": False}, WAIT)
        assert wait_until(lambda: latest_height(session, lab) >= 2, WAIT)
    return entry


def get_json(http: requests.Session, url: str):
    try:
        response = http.get(url, timeout=2)
    except requests.RequestException:
        return None
    return response.json() if response.status_code == 200 else None


def latest_height(http: requests.Session, lab) -> int:
    status = get_json(http, lab.endpoints()[NODE0] + "/status")
    return int(status["result"]["sync_info"]["latest_block_height"]) if status else 0


def status_code(http: requests.Session, url: str) -> int | None:
    try:
        return http.get(url, timeout=2).status_code
    except requests.RequestException:
        return None


def requests_total(http: requests.Session, gateway: dict) -> dict[tuple[str, str], float]:
    """Return http_requests_total of the gateway as {(handler, code): value}, parsed by prometheus_client."""
    text = http.get(gateway["metrics"], timeout=2).text
    totals = {}
    for family in text_string_to_metric_families(text):
        if family.name == "http_requests":
            for sample in family.samples:
                if sample.name == "http_requests_total":
                    totals[(sample.labels["handler"], sample.labels["code"])] = sample.value
    return totals


def client_requests_by_code(totals: dict) -> dict[str, float]:
    handlers = {path for path, _ in REQUEST_MIX}
    by_code: dict[str, float] = {}
    for (handler, code), value in totals.items():
        if handler in handlers:
            by_code[code] = by_code.get(code, 0.0) + value
    return by_code


def b64_bytes(value: str) -> bytes:
    return base64.b64decode(value, validate=True)


# -- network file ---------------------------------------------------------------------------


def test_network_file_lists_gateway_and_client(tmp_path):
    network = create_network(tmp_path, chain_id="gw-test-1", validators=2, time_scale=TIME_SCALE, classic_ports=False)
    gateway, client, veid, cluster = load_network(tmp_path).services

    assert (gateway.name, gateway.kind, client.name, client.kind) == (GATEWAY, "gateway", CLIENT, "client")
    assert (cluster.name, cluster.kind, set(cluster.ports)) == ("virtengine-cluster", "cluster", {"api"})
    assert set(gateway.ports) == {"rest", "metrics"}
    assert client.ports == {}
    assert gateway.options["upstream"] == NODE0
    assert client.options["gateway"] == GATEWAY
    validator_ports = {port for spec in network.validators for port in spec.ports.values()}
    assert not validator_ports & set(gateway.ports.values())
    assert (veid.name, veid.kind) == ("virtengine-veid", "veid")
    assert not set(veid.ports.values()) & (validator_ports | set(gateway.ports.values()))
    assert [spec.name for spec in network.specs] == ["virtengine-node-0", "virtengine-node-1", GATEWAY, CLIENT,
                                                     "virtengine-veid", "virtengine-cluster"]


def test_old_network_file_loads_without_services(tmp_path):
    create_network(tmp_path, chain_id="gw-test-1", validators=1, time_scale=TIME_SCALE, classic_ports=False)
    path = tmp_path / "network.json"
    raw = json.loads(path.read_text())
    del raw["services"]
    path.write_text(json.dumps(raw))

    network = load_network(path)

    assert network.services == ()
    assert [spec.name for spec in network.specs] == [NODE0]


def test_without_services_creates_none(tmp_path):
    network = create_network(tmp_path, chain_id="gw-test-1", validators=1, time_scale=TIME_SCALE,
                             classic_ports=False, with_services=False)

    assert network.services == ()
    assert load_network(tmp_path).services == ()


def test_gateway_and_client_import_with_stdlib_only(tmp_path):
    code = """
        import importlib
        for name in ("incidentlab.localnet.gateway", "incidentlab.localnet.client", "incidentlab.localnet.network"):
            importlib.import_module(name)
        print(sorted(n for n in sys.modules if n.partition(".")[0] not in ALLOWED and n != "__main__"))
    """
    process = run_python(code, cwd=tmp_path)
    stdout, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    assert stdout.strip() == "[]"


# -- client load ----------------------------------------------------------------------------


def test_client_mix_is_seeded():
    def paths(seed: int) -> list[str]:
        load = ClientLoad(1, seed=seed, timeout=0.5, summary_interval=1.0)
        return [load.next_path() for _ in range(40)]

    assert paths(3) == paths(3)
    assert paths(3) != paths(4)
    assert set(paths(3)) == {path for path, _ in REQUEST_MIX}
    assert client_timeout(upstream_timeout(2.0, TIME_SCALE)) > GATEWAY_TIMEOUT


def test_client_drops_requests_to_frozen_gateway(caplog):
    # A listening socket that never accepts plays a frozen gateway: the kernel completes the
    # connection, and no response ever comes.
    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", 0))
        frozen.listen(64)
        load = ClientLoad(frozen.getsockname()[1], rate=40, concurrency=2, timeout=2.0, summary_interval=5.0)
        stopped = threading.Event()
        runner = threading.Thread(target=load.run, args=(stopped,))
        with caplog.at_level(logging.INFO, logger="incidentlab.localnet.client"):
            runner.start()
            time.sleep(0.5)
            workers = [thread for thread in threading.enumerate() if thread.name.startswith("request")]
            stopped.set()
            runner.join(5)

    summary = [record.getMessage() for record in caplog.records if "summary" in record.getMessage()][-1]
    assert len(workers) == 2
    assert "sent=2 " in summary
    assert int(summary.split("dropped=")[1].split()[0]) >= 10


# -- gateway on the local backend --------------------------------------------------------------


def test_rest_syncing_and_node_info(http, lab, gateway):
    node_info = get_json(http, gateway["rest"] + f"{REST}/node_info")
    direct = get_json(http, lab.endpoints()[NODE0] + "/status")["result"]["node_info"]
    default = node_info["default_node_info"]

    assert get_json(http, gateway["rest"] + f"{REST}/syncing") == {"syncing": False}
    assert set(node_info) == {"default_node_info", "application_version"}
    assert default["default_node_id"] == direct["id"]
    assert default["network"] == lab.config.chain_id
    assert default["moniker"] == NODE0
    assert b64_bytes(default["channels"]) == bytes.fromhex(direct["channels"])
    assert default["protocol_version"] == direct["protocol_version"]
    assert node_info["application_version"]["name"] == "virtengine"
    assert node_info["application_version"]["version"]


def test_rest_latest_block_matches_rpc(http, lab, gateway):
    response = http.get(gateway["rest"] + f"{REST}/blocks/latest", timeout=2)
    assert response.status_code == 200, response.text
    latest = response.json()
    height = latest["block"]["header"]["height"]
    rpc = get_json(http, lab.endpoints()[NODE0] + f"/block?height={height}")["result"]
    header, rpc_header = latest["block"]["header"], rpc["block"]["header"]

    assert set(latest) == {"block_id", "block"}
    assert b64_bytes(latest["block_id"]["hash"]) == bytes.fromhex(rpc["block_id"]["hash"])
    assert latest["block_id"]["part_set_header"]["total"] == rpc["block_id"]["parts"]["total"]
    assert header["chain_id"] == lab.config.chain_id
    assert header["time"] == rpc_header["time"]
    assert b64_bytes(header["app_hash"]) == bytes.fromhex(rpc_header["app_hash"])
    assert len(b64_bytes(header["proposer_address"])) == 20
    assert set(latest["block"]) == {"header", "data", "evidence", "last_commit"}
    flags = {signature["block_id_flag"] for signature in latest["block"]["last_commit"]["signatures"]}
    assert flags <= {"BLOCK_ID_FLAG_COMMIT", "BLOCK_ID_FLAG_ABSENT", "BLOCK_ID_FLAG_NIL"}


def test_rpc_proxy_passes_responses_through(http, lab, gateway):
    proxied = http.get(gateway["rest"] + "/rpc/status", timeout=2)
    direct = http.get(lab.endpoints()[NODE0] + "/status", timeout=2).json()
    error = http.get(gateway["rest"] + "/rpc/block?height=0", timeout=2)
    direct_error = http.get(lab.endpoints()[NODE0] + "/block?height=0", timeout=2)

    assert proxied.status_code == 200
    assert proxied.json()["result"]["node_info"] == direct["result"]["node_info"]
    assert proxied.json()["jsonrpc"] == "2.0"
    assert error.status_code == direct_error.status_code == 500
    assert error.json() == direct_error.json()
    assert http.get(gateway["rest"] + "/no/such/route", timeout=2).status_code == 404


def test_pause_gives_504_and_recovers(http, lab, gateway):
    url = gateway["rest"] + "/rpc/status"
    with lab.fault("pause", NODE0):
        started = time.monotonic()
        response = http.get(url, timeout=2)
        elapsed = time.monotonic() - started

        assert response.status_code == 504
        assert response.json() == {"error": "upstream timed out", "upstream": NODE0, "timeout_seconds": GATEWAY_TIMEOUT}
        assert GATEWAY_TIMEOUT <= elapsed < 1.0
    assert wait_until(lambda: status_code(http, url) == 200, WAIT)
    log = lab.logs(GATEWAY, tail="all", timestamps=False)
    assert f"upstream {NODE0} on 127.0.0.1:" in log
    assert "is now timeout (was ok)" in log


def test_stop_gives_502_and_recovers(http, lab, gateway):
    url = gateway["rest"] + f"{REST}/syncing"
    with lab.fault("stop", NODE0):
        response = http.get(url, timeout=2)

        assert response.status_code == 502
        assert response.json() == {"error": "upstream refused the connection", "upstream": NODE0}
    # The restarted node block-syncs first: the gateway responds again, with syncing true at first.
    assert wait_until(lambda: status_code(http, url) == 200, WAIT)
    assert wait_until(lambda: get_json(http, url) == {"syncing": False}, WAIT)
    assert "is now refused" in lab.logs(GATEWAY, tail="all", timestamps=False)


def test_metrics_show_client_load_then_errors(http, lab, gateway):
    # Only the client sends requests meanwhile, at 5 per second.
    before = client_requests_by_code(requests_total(http, gateway))
    assert wait_until(lambda: client_requests_by_code(requests_total(http, gateway)).get("200", 0) >= before.get("200", 0) + 5, WAIT)

    with lab.fault("pause", NODE0):
        paused = client_requests_by_code(requests_total(http, gateway))
        assert wait_until(lambda: client_requests_by_code(requests_total(http, gateway)).get("504", 0)
                          >= paused.get("504", 0) + 3, WAIT)
    assert wait_until(lambda: "504=" in lab.logs(CLIENT, tail=20, timestamps=False), WAIT)

    totals = requests_total(http, gateway)
    handlers = {handler for handler, _ in totals}
    assert handlers <= {path for path, _ in REQUEST_MIX} | {"/rpc/block", "other"}
    families = {family.name: family for family in text_string_to_metric_families(http.get(gateway["metrics"], timeout=2).text)}
    assert families["http_request_duration_seconds"].type == "histogram"


def test_latency_on_node0_slows_gateway(http, lab, gateway):
    def median_seconds() -> float:
        samples = []
        for _ in range(7):
            started = time.perf_counter()
            http.get(gateway["rest"] + "/rpc/status", timeout=2)
            samples.append(time.perf_counter() - started)
        return sorted(samples)[3]

    direct = median_seconds()
    with lab.fault("latency", NODE0, delay=0.04):
        # The gateway re-reads the routes every 0.2 s, so it takes the proxy soon after the fault.
        assert wait_until(lambda: median_seconds() - direct >= 0.07, WAIT)
    assert wait_until(lambda: median_seconds() < direct + 0.04, WAIT)


def test_status_json_lists_gateway_and_client(lab, gateway):
    env = {**os.environ, "INCIDENTLAB_HOME": str(lab.config.home)}
    result = subprocess.run([sys.executable, "-m", "incidentlab", "lab", "status", "--json"],
                            capture_output=True, text=True, env=env, timeout=60)
    services = {service["name"]: service for service in json.loads(result.stdout)["services"]}
    table = lab.targets().set_index("NAME")

    assert result.returncode == 0, result.stderr
    assert services[GATEWAY]["kind"] == "gateway"
    assert services[GATEWAY]["status"] == "running"
    assert services[GATEWAY]["rest"] == gateway["rest"]
    assert services[GATEWAY]["metrics"].endswith("/metrics")
    assert services[CLIENT]["kind"] == "client"
    assert services[CLIENT]["status"] == "running"
    assert table.loc[GATEWAY, "KIND"] == "gateway"
    assert table.loc[CLIENT, "KIND"] == "client"
    assert lab.validators() == [f"virtengine-node-{index}" for index in range(4)]
    assert list(lab.endpoints()) == lab.validators()


# -- gateway on the Docker backend ------------------------------------------------------------


@pytest.mark.docker
def test_docker_gateway_504_while_paused(tmp_path, http):
    from test_docker_backend import skip_or_fail

    from incidentlab.backends.docker import HOME_LABEL, DockerBackend
    from incidentlab.backends.docker_image import IMAGE, engine_client, image_exists
    from incidentlab.errors import ConfigError

    try:
        engine = engine_client(timeout=30)
    except ConfigError as exc:
        skip_or_fail(f"no Docker engine is reachable: {exc}")
    if not image_exists(engine):
        skip_or_fail(f"the image {IMAGE} is missing; build it with `python -m incidentlab.backends.docker_image build`")
    config = LabConfig(home=tmp_path / "lab", backend="docker", validators=4, time_scale=TIME_SCALE, classic_ports=False)
    backend = DockerBackend(config, client=engine)
    try:
        backend.up()
        entry = next(service for service in backend.services() if service["kind"] == "gateway")
        container = engine.containers.get(GATEWAY)
        url = entry["rest"] + "/rpc/status"

        assert container.labels["incidentlab.role"] == "gateway"
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        assert backend.inspect(CLIENT)["Status"] == "running"
        assert wait_until(lambda: status_code(http, url) == 200, WAIT)
        backend.pause(NODE0)
        try:
            assert http.get(url, timeout=2).status_code == 504
        finally:
            backend.unpause(NODE0)
        assert wait_until(lambda: status_code(http, url) == 200, WAIT)
    finally:
        for leftover in engine.containers.list(all=True, filters={"label": f"{HOME_LABEL}={config.home}"}):
            leftover.remove(force=True)
        engine.close()

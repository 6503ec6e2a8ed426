"""CometBFT RPC and /metrics shapes of a real 4-validator localnet on 127.0.0.1.

One localnet serves the whole module because these tests only read from it.
"""

from __future__ import annotations

import base64
import re
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
#: Height every validator must reach before the tests start, so that the blocks cover every proposer.
READY_HEIGHT = 12
HEALTH_BODY = {"jsonrpc": "2.0", "id": -1, "result": {}}
ABSENT_SIGNATURE = {"block_id_flag": 1, "validator_address": "", "timestamp": "0001-01-01T00:00:00Z", "signature": None}
HASH = re.compile(r"^[0-9A-F]{64}$")
ADDRESS = re.compile(r"^[0-9A-F]{40}$")
NODE_ID = re.compile(r"^[0-9a-f]{40}$")
INT64 = re.compile(r"^(0|[1-9][0-9]*)$")
RFC3339_NANOS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
NODE_INFO_KEYS = {"protocol_version", "id", "listen_addr", "network", "version", "channels", "moniker", "other"}
SYNC_INFO_KEYS = {
    "latest_block_hash", "latest_app_hash", "latest_block_height", "latest_block_time",
    "earliest_block_hash", "earliest_app_hash", "earliest_block_height", "earliest_block_time", "catching_up",
}
HEADER_KEYS = {
    "version", "chain_id", "height", "time", "last_block_id", "last_commit_hash", "data_hash", "validators_hash",
    "next_validators_hash", "consensus_hash", "app_hash", "last_results_hash", "evidence_hash", "proposer_address",
}
GAUGES = (
    "cometbft_consensus_height", "cometbft_consensus_validators", "cometbft_consensus_validators_power",
    "cometbft_consensus_missing_validators", "cometbft_consensus_missing_validators_power",
    "cometbft_consensus_rounds", "cometbft_consensus_latest_block_height",
    "cometbft_consensus_validator_missed_blocks", "cometbft_consensus_validator_last_signed_height",
    "cometbft_blocksync_syncing", "cometbft_p2p_peers",
)
BLOCK_INTERVAL = "cometbft_consensus_block_interval_seconds"


@pytest.fixture(scope="module")
def http():
    """A requests session that ignores proxy settings, so every request stays on 127.0.0.1."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


@pytest.fixture(scope="module")
def localnet(tmp_path_factory, http):
    """A running 4-validator localnet past READY_HEIGHT; yields (config, network), stops every process after."""
    config = LabConfig(home=tmp_path_factory.mktemp("lab"), validators=VALIDATORS, time_scale=TIME_SCALE,
                       classic_ports=False)
    backend = LocalBackend(config)
    try:
        backend.up()
        network = backend.localnet.network()
        wait_for(lambda: min(latest_height(http, spec) for spec in network.validators) >= READY_HEIGHT,
                 timeout=30, description=f"every validator at height {READY_HEIGHT} or more")
        yield config, network
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


def get_result(http, spec, method: str, **params) -> dict:
    """GET a URI-style RPC method and return its ``result``, checking the HTTP status and the envelope."""
    response = http.get(f"{spec.rpc_url}/{method}", params=params, timeout=2)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] == -1
    return body["result"]


def latest_height(http, spec) -> int:
    return int(get_result(http, spec, "status")["sync_info"]["latest_block_height"])


def scrape(http, spec) -> dict:
    """Return the metric families of a validator's /metrics by name."""
    response = http.get(spec.metrics_url, timeout=2)
    assert response.status_code == 200
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def only_value(families: dict, name: str) -> float:
    samples = [sample for sample in families[name].samples if sample.name == name]
    assert len(samples) == 1, samples
    return samples[0].value


def assert_base64(value: str, size: int) -> None:
    assert len(base64.b64decode(value, validate=True)) == size, value


def assert_block_id(block_id: dict) -> None:
    assert set(block_id) == {"hash", "parts"}
    assert HASH.match(block_id["hash"]), block_id
    assert set(block_id["parts"]) == {"total", "hash"}
    assert type(block_id["parts"]["total"]) is int
    assert HASH.match(block_id["parts"]["hash"]), block_id


# -- /health, /status, /net_info, /abci_info -------------------------------------------


def test_health_answers_empty_result(localnet, http):
    _, network = localnet
    for spec in network.validators:
        response = http.get(f"{spec.rpc_url}/health", timeout=2)

        assert response.status_code == 200
        assert response.json() == HEALTH_BODY


def test_status_node_info(localnet, http):
    config, network = localnet
    for spec in network.validators:
        node_info = get_result(http, spec, "status")["node_info"]

        assert set(node_info) == NODE_INFO_KEYS
        assert set(node_info["protocol_version"]) == {"p2p", "block", "app"}
        assert all(INT64.match(value) for value in node_info["protocol_version"].values()), node_info
        assert NODE_ID.match(node_info["id"])
        assert node_info["id"] == spec.node_id
        assert node_info["listen_addr"] == f"tcp://127.0.0.1:{spec.ports['p2p']}"
        assert node_info["network"] == config.chain_id
        assert re.match(r"^\d+\.\d+\.\d+", node_info["version"])
        assert re.match(r"^[0-9a-f]+$", node_info["channels"])
        assert node_info["moniker"] == spec.name
        assert set(node_info["other"]) == {"tx_index", "rpc_address"}
        assert node_info["other"]["rpc_address"] == f"tcp://127.0.0.1:{spec.ports['rpc']}"


def test_status_sync_info(localnet, http):
    _, network = localnet
    sync_info = get_result(http, network.validators[0], "status")["sync_info"]

    assert set(sync_info) == SYNC_INFO_KEYS
    for key in ("latest_block_hash", "latest_app_hash", "earliest_block_hash", "earliest_app_hash"):
        assert HASH.match(sync_info[key]), (key, sync_info[key])
    for key in ("latest_block_height", "earliest_block_height"):
        assert isinstance(sync_info[key], str) and INT64.match(sync_info[key]), (key, sync_info[key])
    for key in ("latest_block_time", "earliest_block_time"):
        assert RFC3339_NANOS.match(sync_info[key]), (key, sync_info[key])
    assert sync_info["earliest_block_height"] == "1"
    assert int(sync_info["latest_block_height"]) >= READY_HEIGHT
    assert sync_info["catching_up"] is False


def test_status_matches_block(localnet, http):
    _, network = localnet
    spec = network.validators[1]
    sync_info = get_result(http, spec, "status")["sync_info"]

    latest = get_result(http, spec, "block", height=sync_info["latest_block_height"])
    earliest = get_result(http, spec, "block", height="1")

    assert latest["block_id"]["hash"] == sync_info["latest_block_hash"]
    assert latest["block"]["header"]["time"] == sync_info["latest_block_time"]
    assert latest["block"]["header"]["app_hash"] == sync_info["latest_app_hash"]
    assert earliest["block_id"]["hash"] == sync_info["earliest_block_hash"]


def test_status_validator_info(localnet, http):
    _, network = localnet
    for spec in network.validators:
        validator_info = get_result(http, spec, "status")["validator_info"]

        assert set(validator_info) == {"address", "pub_key", "voting_power"}
        assert ADDRESS.match(validator_info["address"])
        assert validator_info["address"] == spec.address
        assert validator_info["pub_key"]["type"] == "tendermint/PubKeyEd25519"
        assert_base64(validator_info["pub_key"]["value"], 32)
        assert validator_info["voting_power"] == "10"


def test_net_info_lists_three_peers(localnet, http):
    _, network = localnet
    spec = network.validators[0]
    net_info = get_result(http, spec, "net_info")

    assert net_info["n_peers"] == "3"
    assert net_info["listening"] is True
    assert isinstance(net_info["listeners"], list) and net_info["listeners"]
    assert len(net_info["peers"]) == 3
    for peer in net_info["peers"]:
        assert {"node_info", "is_outbound", "connection_status", "remote_ip"} <= set(peer)
        assert set(peer["node_info"]) == NODE_INFO_KEYS
        assert isinstance(peer["is_outbound"], bool)
        assert peer["remote_ip"] == "127.0.0.1"
    monikers = {peer["node_info"]["moniker"] for peer in net_info["peers"]}
    assert monikers == {other.name for other in network.validators if other.name != spec.name}


def test_abci_info_shape(localnet, http):
    _, network = localnet
    response = get_result(http, network.validators[0], "abci_info")["response"]

    assert set(response) == {"data", "version", "app_version", "last_block_height", "last_block_app_hash"}
    assert isinstance(response["data"], str) and response["data"]
    assert isinstance(response["version"], str) and response["version"]
    assert response["app_version"] == "1"
    assert INT64.match(response["last_block_height"])
    assert int(response["last_block_height"]) >= READY_HEIGHT
    assert_base64(response["last_block_app_hash"], 32)


# -- /block --------------------------------------------------------------------------


def test_block_shape(localnet, http):
    config, network = localnet
    spec = network.validators[0]
    addresses = {validator.address for validator in network.validators}
    previous = get_result(http, spec, "block", height="2")
    result = get_result(http, spec, "block", height="3")

    assert set(result) == {"block_id", "block"}
    assert_block_id(result["block_id"])
    block = result["block"]
    assert set(block) == {"header", "data", "evidence", "last_commit"}

    header = block["header"]
    assert set(header) == HEADER_KEYS
    assert header["chain_id"] == config.chain_id
    assert header["height"] == "3"
    assert RFC3339_NANOS.match(header["time"])
    assert header["last_block_id"] == previous["block_id"]
    assert header["proposer_address"] in addresses
    assert block["data"]["txs"] == []
    assert block["evidence"]["evidence"] == []

    last_commit = block["last_commit"]
    assert set(last_commit) == {"height", "round", "block_id", "signatures"}
    assert last_commit["height"] == "2"
    assert type(last_commit["round"]) is int
    assert last_commit["block_id"] == previous["block_id"]
    assert len(last_commit["signatures"]) == VALIDATORS
    committed = [entry for entry in last_commit["signatures"] if entry["block_id_flag"] == 2]
    # A commit needs more than two thirds of the power: 3 of 4 equal validators.
    assert len(committed) >= 3, last_commit["signatures"]
    for entry in last_commit["signatures"]:
        assert set(entry) == {"block_id_flag", "validator_address", "timestamp", "signature"}
        assert type(entry["block_id_flag"]) is int
        assert entry["block_id_flag"] in (1, 2, 3)
        if entry["block_id_flag"] == 1:
            assert entry == ABSENT_SIGNATURE
    for entry in committed:
        assert entry["validator_address"] in addresses
        assert RFC3339_NANOS.match(entry["timestamp"])
        assert_base64(entry["signature"], 64)


def test_block_above_latest_is_internal_error(localnet, http):
    _, network = localnet
    spec = network.validators[0]
    before = latest_height(http, spec)

    response = http.get(f"{spec.rpc_url}/block", params={"height": "1000000"}, timeout=2)
    after = latest_height(http, spec)

    assert response.status_code == 500
    body = response.json()
    assert "result" not in body
    assert body["jsonrpc"] == "2.0"
    assert body["id"] == -1
    assert body["error"]["code"] == -32603
    assert body["error"]["message"] == "Internal error"
    match = re.fullmatch(r"height 1000000 must be less than or equal to the current blockchain height (\d+)",
                         body["error"]["data"])
    assert match, body["error"]["data"]
    assert before <= int(match.group(1)) <= after


def test_block_height_zero_is_internal_error(localnet, http):
    _, network = localnet
    response = http.get(f"{network.validators[0].rpc_url}/block", params={"height": "0"}, timeout=2)

    assert response.status_code == 500
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": -1,
        "error": {"code": -32603, "message": "Internal error", "data": "height must be greater than 0, but got 0"},
    }


# -- JSON-RPC POST -------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["probe-7", 42])
def test_post_echoes_request_id(localnet, http, request_id):
    config, network = localnet
    request = {"jsonrpc": "2.0", "id": request_id, "method": "status", "params": {}}

    body = http.post(network.validators[0].rpc_url, json=request, timeout=2).json()

    assert body["id"] == request_id
    assert type(body["id"]) is type(request_id)
    assert body["result"]["node_info"]["network"] == config.chain_id


def test_post_with_height_param(localnet, http):
    _, network = localnet
    request = {"jsonrpc": "2.0", "id": 3, "method": "block", "params": {"height": "2"}}

    body = http.post(network.validators[0].rpc_url, json=request, timeout=2).json()

    assert body["id"] == 3
    assert body["result"]["block"]["header"]["height"] == "2"


def test_post_unknown_method(localnet, http):
    _, network = localnet
    request = {"jsonrpc": "2.0", "id": 5, "method": "no_such_method", "params": {}}

    body = http.post(network.validators[0].rpc_url, json=request, timeout=2).json()

    assert "result" not in body
    assert body["id"] == 5
    assert body["error"]["code"] == -32601


def test_post_malformed_json(localnet, http):
    _, network = localnet
    response = http.post(network.validators[0].rpc_url, data=b'{"jsonrpc": "2.0", "id": 1, "method": ',
                         headers={"Content-Type": "application/json"}, timeout=2)

    body = response.json()

    assert "result" not in body
    assert body["error"]["code"] == -32700


# -- proposer rotation ---------------------------------------------------------------


def commit_rounds_and_proposers(http, spec, top: int) -> tuple[dict, dict]:
    """Return {height: commit round} and {height: proposer address} for heights 1..top-1.

    A block's commit round is only known from the next block's last_commit.
    """
    blocks = {height: get_result(http, spec, "block", height=str(height))["block"] for height in range(1, top + 1)}
    rounds = {height: blocks[height + 1]["last_commit"]["round"] for height in range(1, top)}
    proposers = {height: blocks[height]["header"]["proposer_address"] for height in range(1, top)}
    return rounds, proposers


def test_proposer_rotates_each_height_and_round(localnet, http):
    _, network = localnet
    spec = network.validators[0]
    rounds, proposers = commit_rounds_and_proposers(http, spec, latest_height(http, spec))

    assert set(proposers.values()) == {validator.address for validator in network.validators}
    # The proposer moves one step along a fixed order per height and one per round, so
    # (height + round) modulo the validator count names one proposer and each proposer has one slot.
    by_slot: dict[int, set] = {}
    for height, proposer in proposers.items():
        by_slot.setdefault((height + rounds[height]) % VALIDATORS, set()).add(proposer)
    assert sorted(by_slot) == list(range(VALIDATORS)), (rounds, proposers)
    assert all(len(slot) == 1 for slot in by_slot.values()), (by_slot, rounds)
    assert len(set.union(*by_slot.values())) == VALIDATORS, by_slot


def test_healthy_chain_commits_in_round_zero(localnet, http):
    _, network = localnet
    spec = network.validators[0]
    rounds, _ = commit_rounds_and_proposers(http, spec, latest_height(http, spec))

    # Every proposer is up, so each height after the start-up should commit in round 0, and
    # consecutive blocks then always come from different proposers.
    late = {height: round_ for height, round_ in rounds.items() if height >= 3 and round_ != 0}
    assert late == {}, f"heights committed after round 0 with all {VALIDATORS} validators up: {late}"


# -- /metrics ------------------------------------------------------------------------


def test_metrics_content_type(localnet, http):
    _, network = localnet
    response = http.get(network.validators[0].metrics_url, timeout=2)

    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")


def test_metrics_every_series_has_chain_id(localnet, http):
    config, network = localnet
    for spec in network.validators:
        families = scrape(http, spec)
        cometbft = [family for family in families.values() if family.name.startswith("cometbft_")]

        assert len(cometbft) >= len(GAUGES) + 1
        for family in cometbft:
            assert family.samples, family.name
            for sample in family.samples:
                assert sample.labels.get("chain_id") == config.chain_id, sample


def test_metrics_names_and_types(localnet, http):
    _, network = localnet
    families = scrape(http, network.validators[0])

    for name in GAUGES:
        assert name in families, name
        assert families[name].type == "gauge", (name, families[name].type)
    assert families[BLOCK_INTERVAL].type == "histogram"


def test_metrics_validator_set(localnet, http):
    _, network = localnet
    families = scrape(http, network.validators[0])

    assert only_value(families, "cometbft_consensus_validators") == VALIDATORS
    assert only_value(families, "cometbft_consensus_validators_power") == 10 * VALIDATORS
    missing = only_value(families, "cometbft_consensus_missing_validators")
    assert 0 <= missing <= VALIDATORS
    assert only_value(families, "cometbft_consensus_missing_validators_power") == 10 * missing
    assert only_value(families, "cometbft_consensus_rounds") >= 0


def test_metrics_heights_follow_chain(localnet, http):
    _, network = localnet
    spec = network.validators[2]
    before = latest_height(http, spec)
    families = scrape(http, spec)
    after = latest_height(http, spec)

    latest = only_value(families, "cometbft_consensus_latest_block_height")
    assert before <= latest <= after
    # The consensus height is the height being decided: the latest block, or the one after it.
    assert latest <= only_value(families, "cometbft_consensus_height") <= latest + 1


def test_metrics_per_validator_series(localnet, http):
    _, network = localnet
    for spec in network.validators:
        families = scrape(http, spec)

        for name in ("cometbft_consensus_validator_missed_blocks", "cometbft_consensus_validator_last_signed_height"):
            samples = families[name].samples
            assert [sample.labels.get("validator_address") for sample in samples] == [spec.address], (name, samples)
        last_signed = families["cometbft_consensus_validator_last_signed_height"].samples[0].value
        assert last_signed >= 1
        assert only_value(families, "cometbft_blocksync_syncing") == 0
        assert only_value(families, "cometbft_p2p_peers") == VALIDATORS - 1


def test_metrics_block_interval_histogram(localnet, http):
    _, network = localnet
    samples = scrape(http, network.validators[0])[BLOCK_INTERVAL].samples

    buckets = [sample for sample in samples if sample.name == f"{BLOCK_INTERVAL}_bucket"]
    bounds = [sample.labels["le"] for sample in buckets]
    counts = [sample.value for sample in buckets]
    (total,) = [sample.value for sample in samples if sample.name == f"{BLOCK_INTERVAL}_sum"]
    (count,) = [sample.value for sample in samples if sample.name == f"{BLOCK_INTERVAL}_count"]

    assert bounds[-1] == "+Inf"
    assert [float(bound) for bound in bounds] == sorted(float(bound) for bound in bounds)
    assert counts == sorted(counts)
    assert counts[-1] == count
    assert count >= READY_HEIGHT - 2
    assert total > 0

"""CometBFT RPC client, probe_status and the height sampler against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import logging
import socket
import time

import pytest

from helpers.rpc_stub import make_rpc_stub, rpc_stub  # noqa: F401  (pytest fixtures)
from incidentlab.errors import (
    ConfigError,
    ProbeError,
    RPCConnectionRefused,
    RPCError,
    RPCHTTPError,
    RPCTimeout,
)
from incidentlab.probes import (
    ABSENT,
    COMMIT,
    FRAME_COLUMNS,
    NIL,
    CometBFTClient,
    HeightSampler,
    parse_time,
    probe_status,
    sample_heights,
)

UTC = dt.timezone.utc
SHORT_TIMEOUT = 0.3


@pytest.fixture
def closed_port():
    """A 127.0.0.1 port that is bound but not listening, so every connection is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def wait_for(condition, timeout: float = 5.0, interval: float = 0.02):
    """Poll ``condition`` until it returns a truthy value, and return that value; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout} s")


# --- typed results ---------------------------------------------------------------------------


def test_status_typed_fields(rpc_stub):
    rpc_stub.height = 1262
    with CometBFTClient(rpc_stub.url) as client:
        status = client.status()

    assert status.latest_block_height == 1262
    assert isinstance(status.latest_block_height, int)
    assert status.earliest_block_height == 1
    assert status.voting_power == 10
    assert status.catching_up is False
    assert status.network == "virtengine-localnet-1"
    assert status.moniker == "virtengine-node-0"
    assert status.node_id == "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
    assert status.version == "0.38.12"
    assert status.validator_address == "5D6A0F2C1B3E4D5F60718293A4B5C6D7E8F90123"
    assert status.latest_block_hash == f"{1262:064X}"
    # 12:00:00.123456789 + 1262 s; the nanoseconds are truncated to microseconds.
    assert status.latest_block_time == dt.datetime(2024, 5, 1, 12, 21, 2, 123456, tzinfo=UTC)
    assert status.raw["sync_info"]["latest_block_height"] == "1262"


def test_status_catching_up(rpc_stub):
    rpc_stub.catching_up = True
    with CometBFTClient(rpc_stub.url) as client:
        assert client.status().catching_up is True


def test_block_typed_fields(rpc_stub):
    with CometBFTClient(rpc_stub.url) as client:
        block = client.block(5)

    assert rpc_stub.requests[-1][:2] == ("GET", "/block?height=5")
    assert block.height == 5
    assert block.time == dt.datetime(2024, 5, 1, 12, 0, 5, 123456, tzinfo=UTC)
    assert block.hash == f"{5:064X}"
    assert block.chain_id == "virtengine-localnet-1"
    assert block.proposer_address == "5D6A0F2C1B3E4D5F60718293A4B5C6D7E8F90123"
    assert block.num_txs == 2
    flags = [signature.block_id_flag for signature in block.last_commit_signatures]
    assert flags == [COMMIT, COMMIT, ABSENT, NIL]
    assert block.last_commit_signatures[2].validator_address == ""
    assert block.last_commit_signatures[0] == ("0" * 40, 2)


def test_block_latest_and_empty_txs(rpc_stub):
    rpc_stub.txs = None  # CometBFT encodes an empty slice as null
    with CometBFTClient(rpc_stub.url) as client:
        block = client.block()
    assert rpc_stub.requests[-1][:2] == ("GET", "/block")
    assert block.height == 50
    assert block.num_txs == 0


def test_block_rejects_non_int_height(rpc_stub):
    with CometBFTClient(rpc_stub.url) as client:
        with pytest.raises(TypeError, match=r"height='5'"):
            client.block("5")
    assert rpc_stub.requests == []


def test_net_info_typed_fields(rpc_stub):
    with CometBFTClient(rpc_stub.url) as client:
        info = client.net_info()
    assert info.listening is True
    assert info.n_peers == 2
    assert info.peers[0] == (f"{1:040x}", "virtengine-node-1", "127.0.0.1")
    assert [peer.moniker for peer in info.peers] == ["virtengine-node-1", "virtengine-node-2"]


def test_abci_info_heights_as_ints(rpc_stub):
    with CometBFTClient(rpc_stub.url) as client:
        info = client.abci_info()
    assert info["last_block_height"] == 50
    assert info["app_version"] == 1
    assert info["data"] == "virtengine"


def test_health_passes_and_fails(rpc_stub):
    with CometBFTClient(rpc_stub.url) as client:
        assert client.health() is None
        rpc_stub.bad_gateway("/health")
        with pytest.raises(RPCHTTPError):
            client.health()


def test_call_posts_jsonrpc_with_string_ints(rpc_stub):
    with CometBFTClient(rpc_stub.url) as client:
        first = client.call("block", height=7)
        second = client.call("status")

    assert first["block"]["header"]["height"] == "7"
    assert second["sync_info"]["latest_block_height"] == "50"
    verb, path, body = rpc_stub.requests[0]
    assert (verb, path) == ("POST", "/")
    assert body == {"jsonrpc": "2.0", "id": 1, "method": "block", "params": {"height": "7"}}
    assert rpc_stub.requests[1][2]["id"] == 2


# --- error classes ---------------------------------------------------------------------------


def test_refused_connection(closed_port):
    url = f"http://127.0.0.1:{closed_port}"
    with CometBFTClient(url, timeout=SHORT_TIMEOUT) as client:
        with pytest.raises(RPCConnectionRefused) as caught:
            client.status()
    message = str(caught.value)
    assert f"127.0.0.1:{closed_port}" in message
    assert "incidentlab lab status" in message
    assert caught.value.url == f"{url}/status"


def test_frozen_node_times_out(rpc_stub):
    rpc_stub.hang("/status")
    started = time.monotonic()
    with CometBFTClient(rpc_stub.url, timeout=SHORT_TIMEOUT) as client:
        with pytest.raises(RPCTimeout) as caught:
            client.status()
    assert time.monotonic() - started < 2.0
    assert caught.value.timeout == SHORT_TIMEOUT
    assert f"{rpc_stub.url}/status" in str(caught.value)
    assert "frozen" in str(caught.value)


def test_stall_after_headers_times_out(rpc_stub):
    rpc_stub.stall_body("/status")
    with CometBFTClient(rpc_stub.url, timeout=SHORT_TIMEOUT) as client:
        with pytest.raises(RPCTimeout) as caught:
            client.status()
    assert caught.value.timeout == SHORT_TIMEOUT


def test_dropped_connection_get_retried_once(rpc_stub):
    rpc_stub.drop("/status")
    with CometBFTClient(rpc_stub.url, timeout=SHORT_TIMEOUT) as client:
        with pytest.raises(ProbeError) as caught:
            client.status()
    assert type(caught.value) is ProbeError
    assert "closed connection without response" in str(caught.value)
    assert [request[1] for request in rpc_stub.requests] == ["/status", "/status"]


def test_dropped_connection_post_not_retried(rpc_stub):
    rpc_stub.drop("/status")
    with CometBFTClient(rpc_stub.url, timeout=SHORT_TIMEOUT) as client:
        with pytest.raises(ProbeError):
            client.call("status")
    assert len(rpc_stub.requests) == 1


def test_height_error_envelope_http_500(rpc_stub):
    with CometBFTClient(rpc_stub.url) as client:
        with pytest.raises(RPCError) as caught:
            client.block(100)
    error = caught.value
    assert error.code == -32603
    assert error.rpc_message == "Internal error"
    assert error.data == "height 100 must be less than or equal to the current blockchain height 50"
    assert error.status == 500
    assert f"{rpc_stub.url}/block" in str(error)
    assert "earliest_block_height" in str(error)


def test_jsonrpc_error_on_http_200(rpc_stub):
    with CometBFTClient(rpc_stub.url) as client:
        with pytest.raises(RPCError) as caught:
            client.call("no_such_method")
    assert caught.value.code == -32601
    assert caught.value.status == 200
    assert "POST no_such_method" in str(caught.value)
    assert "Check the method name" in str(caught.value)


def test_non_json_502(rpc_stub):
    rpc_stub.bad_gateway("/status")
    with CometBFTClient(rpc_stub.url) as client:
        with pytest.raises(RPCHTTPError) as caught:
            client.status()
    assert caught.value.status == 502
    assert "502 Bad Gateway" in caught.value.body
    assert f"{rpc_stub.url}/status" in str(caught.value)
    assert "not JSON" in str(caught.value)


def test_plain_text_404(rpc_stub):
    rpc_stub.raw("/status", 404, b"404 page not found\n", "text/plain; charset=utf-8")
    with CometBFTClient(rpc_stub.url) as client:
        with pytest.raises(RPCHTTPError) as caught:
            client.status()
    assert caught.value.status == 404
    assert caught.value.body == "404 page not found\n"


def test_json_without_result(rpc_stub):
    rpc_stub.raw("/status", 200, b'{"jsonrpc": "2.0", "id": -1}', "application/json")
    with CometBFTClient(rpc_stub.url) as client:
        with pytest.raises(RPCHTTPError, match="without a JSON-RPC result"):
            client.status()


def test_missing_field_named(rpc_stub):
    rpc_stub.raw("/status", 200, b'{"jsonrpc": "2.0", "id": -1, "result": {"node_info": {}}}', "application/json")
    with CometBFTClient(rpc_stub.url) as client:
        with pytest.raises(RPCHTTPError, match=r"field node_info\.id is missing"):
            client.status()


def test_credentials_kept_out_of_messages(closed_port):
    with CometBFTClient(f"http://lab:s3cret@127.0.0.1:{closed_port}", timeout=SHORT_TIMEOUT) as client:
        with pytest.raises(RPCConnectionRefused) as caught:
            client.health()
        assert "s3cret" not in repr(client)
    assert "s3cret" not in str(caught.value)
    assert "s3cret" not in caught.value.url


@pytest.mark.parametrize("url", ["127.0.0.1:26657", "ftp://127.0.0.1", "http://", 26657])
def test_invalid_url_rejected(url):
    with pytest.raises(ConfigError, match="http://127.0.0.1:26657"):
        CometBFTClient(url)


def test_tcp_url_and_timeout_checked():
    assert CometBFTClient("tcp://127.0.0.1:26657/").url == "http://127.0.0.1:26657"
    with pytest.raises(ConfigError, match="timeout=0"):
        CometBFTClient("http://127.0.0.1:26657", timeout=0)


def test_parse_time_truncates_nanoseconds():
    assert parse_time("2024-05-01T12:00:00.123456789Z") == dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert parse_time("2024-05-01T14:00:00.5+02:00") == dt.datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)
    assert parse_time("0001-01-01T00:00:00Z") == dt.datetime(1, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="'yesterday'"):
        parse_time("yesterday")


# --- probe_status ----------------------------------------------------------------------------


def test_probe_status_ok(rpc_stub):
    sample = probe_status(rpc_stub.url, 1.0)
    assert sample["ok"] is True
    assert sample["height"] == 50
    assert sample["catching_up"] is False
    assert sample["error"] is None
    assert sample["detail"] is None
    assert sample["url"] == rpc_stub.url
    assert sample["time"].tzinfo is not None
    assert 0 <= sample["latency_s"] < 1.0


@pytest.mark.parametrize(
    "breakage, kind",
    [
        ("hang", "timeout"),
        ("bad_gateway", "http"),
        ("rpc_error", "rpc"),
        ("stopped", "refused"),
        ("drop", "connection"),
    ],
)
def test_probe_status_never_raises(rpc_stub, breakage, kind):
    if breakage == "hang":
        rpc_stub.hang("/status")
    elif breakage == "bad_gateway":
        rpc_stub.bad_gateway("/status")
    elif breakage == "rpc_error":
        rpc_stub.fail("/status", data="node is shutting down")
    elif breakage == "drop":
        rpc_stub.drop("/status")
    else:
        rpc_stub.stop()

    sample = probe_status(rpc_stub.url, SHORT_TIMEOUT)

    assert sample["ok"] is False
    assert sample["error"] == kind
    assert sample["height"] is None
    assert sample["catching_up"] is None
    assert rpc_stub.url in sample["detail"]
    assert sample["latency_s"] < 2.0


# --- HeightSampler and sample_heights --------------------------------------------------------


def test_sampler_first_failure_frozen_node(make_rpc_stub):
    healthy, frozen = make_rpc_stub(), make_rpc_stub()
    targets = {"virtengine-node-0": healthy.url, "virtengine-node-1": frozen.url}
    with HeightSampler(targets, interval=0.1, timeout=SHORT_TIMEOUT) as sampler:
        wait_for(lambda: len(sampler.samples()) >= 4)
        assert sampler.first_failure() is None

        frozen.hang("/status")
        hung_at = dt.datetime.now(UTC)
        failure = wait_for(sampler.first_failure)
        healthy_during_hang = [
            s for s in sampler.samples() if s["target"] == "virtengine-node-0" and s["time"] > hung_at
        ]

    assert failure["target"] == "virtengine-node-1"
    assert failure["error"] == "timeout"
    assert failure["time"] > hung_at
    assert sampler.first_failure(after=failure["time"], target="virtengine-node-0") is None
    # The frozen node's probe waits 0.3 s, while the healthy node keeps its 0.1 s cadence.
    assert len(healthy_during_hang) >= 2
    assert sampler.latest()["virtengine-node-0"]["ok"] is True


def test_sampler_logs_changes_and_recovery(rpc_stub, caplog):
    caplog.set_level(logging.INFO, logger="incidentlab.probes.sampler")
    with HeightSampler({"virtengine-node-0": rpc_stub.url}, interval=0.05, timeout=SHORT_TIMEOUT) as sampler:
        wait_for(lambda: sampler.latest().get("virtengine-node-0"))
        port = rpc_stub.port
        rpc_stub.stop()
        failure = wait_for(sampler.first_failure)
        rpc_stub.height = 51
        rpc_stub.start(port)
        wait_for(lambda: sampler.latest()["virtengine-node-0"]["height"] == 51)

    assert failure["error"] == "refused"
    messages = [record.getMessage() for record in caplog.records]
    assert any("virtengine-node-0: probe failing (refused)" in message for message in messages)
    assert any("virtengine-node-0: responding again at height 51" in message for message in messages)


def test_sampler_frame_and_bounded_memory(rpc_stub):
    sampler = HeightSampler({"virtengine-node-0": rpc_stub.url}, interval=0.02, timeout=SHORT_TIMEOUT, max_samples=5)
    sampler.start()
    wait_for(lambda: len(rpc_stub.requests) >= 8)
    sampler.stop()
    sampler.stop()  # a second stop does nothing

    frame = sampler.frame()
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert len(frame) == 5
    assert str(frame["height"].dtype) == "Int64"
    assert str(frame["time"].dt.tz) == "UTC"
    assert frame["ok"].all()


def test_sampler_survives_failing_callback(rpc_stub, caplog):
    calls = []

    def callback(sample):
        calls.append(sample)
        raise ValueError("callback bug")

    with HeightSampler({"virtengine-node-0": rpc_stub.url}, interval=0.02, on_sample=callback) as sampler:
        wait_for(lambda: len(calls) >= 3)
    assert len(sampler.samples()) >= 3
    assert "on_sample callback raised" in caplog.text


@pytest.mark.parametrize(
    "targets, match",
    [({}, "non-empty dict"), ({"": "http://127.0.0.1:1"}, "target name ''"), ({"n": "127.0.0.1"}, "RPC url")],
)
def test_sampler_rejects_bad_targets(targets, match):
    with pytest.raises(ConfigError, match=match):
        HeightSampler(targets)


def test_sample_heights_rounds(make_rpc_stub, closed_port):
    stub = make_rpc_stub()
    targets = {"virtengine-node-0": stub.url, "virtengine-node-1": f"http://127.0.0.1:{closed_port}"}
    frame = sample_heights(targets, count=3, interval=0.05, timeout=SHORT_TIMEOUT)

    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert len(frame) == 6
    up = frame[frame["target"] == "virtengine-node-0"]
    down = frame[frame["target"] == "virtengine-node-1"]
    assert up["height"].tolist() == [50, 50, 50]
    assert down["error"].tolist() == ["refused"] * 3
    assert down["height"].isna().all()


"""A CometBFT-shaped RPC server on 127.0.0.1 for client tests, with the pytest fixtures that run it.

It serves `/health`, `/status`, `/block`, `/net_info` and `/abci_info` by URI GET and by
JSON-RPC POST. Results have the shapes of the CometBFT RPC: int64 values as strings, RFC 3339
times with nanoseconds, and the error envelope with HTTP 500 on URI calls. A test can make a
route return a JSON-RPC error, hang without answering, stall after the headers, or answer
HTTP 502 with an HTML body, like a gateway in front of a dead node.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import threading
import urllib.parse

import pytest

__all__ = ["RPCStub", "make_rpc_stub", "rpc_stub", "status_result", "block_result", "rfc3339_nano"]

#: Block time of height 0. Block N is N seconds later, and every time gets 789 extra nanoseconds.
GENESIS_TIME = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.timezone.utc)
CHAIN_ID = "virtengine-localnet-1"
VALIDATOR_ADDRESS = "5D6A0F2C1B3E4D5F60718293A4B5C6D7E8F90123"
#: Maximum time that a hanging handler waits, in case a test never stops the stub.
MAX_HANG_S = 30.0
BAD_GATEWAY_HTML = b"<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>"


def rfc3339_nano(moment: dt.datetime, nanos: int = 789) -> str:
    """Format ``moment`` like CometBFT: UTC, nine fractional digits, trailing Z."""
    moment = moment.astimezone(dt.timezone.utc)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond * 1000 + nanos:09d}Z"


def block_time(height: int) -> dt.datetime:
    return GENESIS_TIME + dt.timedelta(seconds=height)


def status_result(height: int, *, catching_up: bool = False, moniker: str = "virtengine-node-0") -> dict:
    """Return a `/status` result at ``height`` with the fields and encodings of CometBFT 0.38."""
    return {
        "node_info": {
            "protocol_version": {"p2p": "8", "block": "11", "app": "0"},
            "id": "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
            "listen_addr": "tcp://127.0.0.1:26656",
            "network": CHAIN_ID,
            "version": "0.38.12",
            "channels": "40202122233038606100",
            "moniker": moniker,
            "other": {"tx_index": "on", "rpc_address": "tcp://127.0.0.1:26657"},
        },
        "sync_info": {
            "latest_block_hash": f"{height:064X}",
            "latest_app_hash": "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "latest_block_height": str(height),
            "latest_block_time": rfc3339_nano(block_time(height)),
            "earliest_block_hash": f"{1:064X}",
            "earliest_app_hash": "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "earliest_block_height": "1",
            "earliest_block_time": rfc3339_nano(block_time(1)),
            "catching_up": catching_up,
        },
        "validator_info": {
            "address": VALIDATOR_ADDRESS,
            "pub_key": {"type": "tendermint/PubKeyEd25519", "value": "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80="},
            "voting_power": "10",
        },
    }


def block_result(height: int, *, flags: list[int], txs: list[str] | None) -> dict:
    """Return a `/block` result with one last_commit signature per block_id_flag in ``flags``."""
    signatures = []
    for index, flag in enumerate(flags):
        absent = flag == 1
        signatures.append(
            {
                "block_id_flag": flag,
                "validator_address": "" if absent else f"{index:040X}",
                "timestamp": "0001-01-01T00:00:00Z" if absent else rfc3339_nano(block_time(height)),
                "signature": None if absent else "c2lnbmF0dXJl",
            }
        )
    previous_id = {"hash": f"{height - 1:064X}", "parts": {"total": 1, "hash": f"{height - 1:064X}"}}
    return {
        "block_id": {"hash": f"{height:064X}", "parts": {"total": 1, "hash": f"{height:064X}"}},
        "block": {
            "header": {
                "version": {"block": "11", "app": "0"},
                "chain_id": CHAIN_ID,
                "height": str(height),
                "time": rfc3339_nano(block_time(height)),
                "last_block_id": previous_id,
                "proposer_address": VALIDATOR_ADDRESS,
            },
            "data": {"txs": txs},
            "evidence": {"evidence": []},
            "last_commit": {"height": str(height - 1), "round": 0, "block_id": previous_id, "signatures": signatures},
        },
    }


class RPCStub:
    """The server. ``height``, ``catching_up``, ``flags`` and ``txs`` set the results it returns.

    ``requests`` stores (HTTP verb, path with query, JSON body or None) of every request.
    """

    def __init__(self) -> None:
        self.height = 50
        self.catching_up = False
        self.flags = [2, 2, 1, 3]
        self.txs: list[str] | None = ["dHgx", "dHgy"]
        self.requests: list[tuple[str, str, object]] = []
        self.port = 0
        self._overrides: dict[str, tuple] = {}
        self._release = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> "RPCStub":
        """Listen on 127.0.0.1 (a free port, or ``port`` to come back on the same one)."""
        self._release.clear()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _handler_class(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release hanging handlers, stop serving and close the port. Calling it again does nothing."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

        # Close kept-alive connections too, as the kernel does when a node process dies.
        # Otherwise a client's pooled connection would still reach a handler thread.
        for connection in list(self._connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._connections.clear()

    def fail(self, path: str, data: str, code: int = -32603, message: str = "Internal error") -> None:
        """Make ``path`` return a JSON-RPC error (HTTP 500 on GET, 200 on POST, as CometBFT does)."""
        self._overrides[path] = ("error", code, message, data)

    def hang(self, path: str) -> None:
        """Make ``path`` accept the request and never respond, like a paused (SIGSTOP) node."""
        self._overrides[path] = ("hang",)

    def drop(self, path: str) -> None:
        """Make ``path`` close the connection without a response, like a node crashing mid-request."""
        self._overrides[path] = ("drop",)

    def stall_body(self, path: str) -> None:
        """Make ``path`` send the status line and headers, then no body."""
        self._overrides[path] = ("stall",)

    def raw(self, path: str, status: int, body: bytes, content_type: str = "text/html") -> None:
        """Make ``path`` respond with HTTP ``status`` and ``body`` as it is."""
        self._overrides[path] = ("raw", status, body, content_type)

    def bad_gateway(self, path: str) -> None:
        """Make ``path`` respond with HTTP 502 and an HTML page, as a gateway in front of a dead node does."""
        self.raw(path, 502, BAD_GATEWAY_HTML)

    def clear(self, path: str) -> None:
        """Make ``path`` respond normally again."""
        self._overrides.pop(path, None)

    def dispatch(self, route: str, params: dict) -> tuple[str, object]:
        """Return ("result", dict), ("error", (code, message, data)) or an override for a route."""
        override = self._overrides.get(route)
        if override is not None:
            return override[0], override[1:]
        if route == "/health":
            return "result", {}
        if route == "/status":
            return "result", status_result(self.height, catching_up=self.catching_up)
        if route == "/block":
            return self._block(params)
        if route == "/net_info":
            return "result", _net_info()
        if route == "/abci_info":
            return "result", _abci_info(self.height)
        return "missing", ()

    def _block(self, params: dict) -> tuple[str, object]:
        # The same validation and data strings as CometBFT's rpc/core/blocks.go.
        height = int(params.get("height", self.height))
        if height <= 0:
            return "error", (-32603, "Internal error", f"height must be greater than 0, but got {height}")
        if height > self.height:
            data = f"height {height} must be less than or equal to the current blockchain height {self.height}"
            return "error", (-32603, "Internal error", data)
        return "result", block_result(height, flags=self.flags, txs=self.txs)


def _net_info() -> dict:
    peers = [
        {
            "node_info": {"id": f"{index:040x}", "moniker": f"virtengine-node-{index}", "network": CHAIN_ID},
            "is_outbound": True,
            "connection_status": {"Duration": "1000000000"},
            "remote_ip": "127.0.0.1",
        }
        for index in (1, 2)
    ]
    return {"listening": True, "listeners": ["Listener(@tcp://127.0.0.1:26656)"], "n_peers": "2", "peers": peers}


def _abci_info(height: int) -> dict:
    return {
        "response": {
            "data": "virtengine",
            "version": "v0.1.0",
            "app_version": "1",
            "last_block_height": str(height),
            "last_block_app_hash": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        }
    }


def _handler_class(stub: RPCStub) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Go's net package sets TCP_NODELAY. Without it, the body written after the headers
            # waits for a delayed ACK, and each kept-alive request took about 40 ms on loopback.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stub._connections.add(self.connection)

        def finish(self) -> None:
            stub._connections.discard(self.connection)
            super().finish()

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep pytest output clean, since stub.requests stores every request

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            stub.requests.append(("GET", self.path, None))
            params = dict(urllib.parse.parse_qsl(parts.query))
            self._answer(*stub.dispatch(parts.path, params), request_id=-1, error_status=500)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                stub.requests.append(("POST", self.path, None))
                self._answer("error", (-32700, "Parse error. Invalid JSON", ""), request_id=-1, error_status=500)
                return
            stub.requests.append(("POST", self.path, body))
            kind, value = stub.dispatch("/" + str(body.get("method")), body.get("params") or {})
            if kind == "missing":
                kind, value = "error", (-32601, "Method not found", "")
            self._answer(kind, value, request_id=body.get("id"), error_status=200)

        def _answer(self, kind: str, value, *, request_id, error_status: int) -> None:
            if kind == "result":
                self._send(200, {"jsonrpc": "2.0", "id": request_id, "result": value})
            elif kind == "error":
                code, message, data = value
                error = {"code": code, "message": message, "data": data}
                self._send(error_status, {"jsonrpc": "2.0", "id": request_id, "error": error})
            elif kind == "hang":
                stub._release.wait(MAX_HANG_S)
                self.close_connection = True
            elif kind == "drop":
                self.close_connection = True
            elif kind == "stall":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.flush()
                stub._release.wait(MAX_HANG_S)
                self.close_connection = True
            elif kind == "raw":
                status, body, content_type = value
                self._send_bytes(status, body, content_type)
            else:
                self._send_bytes(404, b"404 page not found\n", "text/plain; charset=utf-8")

        def _send(self, status: int, envelope: dict) -> None:
            self._send_bytes(status, json.dumps(envelope).encode(), "application/json")

        def _send_bytes(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def make_rpc_stub():
    """Start RPCStubs on free 127.0.0.1 ports, and stop every one at teardown."""
    stubs: list[RPCStub] = []

    def make() -> RPCStub:
        stub = RPCStub().start()
        stubs.append(stub)
        return stub

    yield make
    for stub in stubs:
        stub.stop()


@pytest.fixture
def rpc_stub(make_rpc_stub):
    """One running RPCStub at height 50."""
    return make_rpc_stub()

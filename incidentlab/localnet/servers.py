"""HTTP servers of a validator: CometBFT RPC, the p2p endpoint and Prometheus /metrics.

All bind 127.0.0.1. The RPC follows CometBFT's shapes: a JSON-RPC 2.0 envelope with id -1
for URI calls, int64 values as strings, and errors sent with HTTP 500. Standard library only.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler

from .httpserver import ServiceHTTPServer
from .node import APP_NAME, APP_VERSION, COMETBFT_VERSION, ValidatorNode, app_hash_base64, block_id, pub_key_json

__all__ = ["serve_all", "RPCMethodError"]

logger = logging.getLogger(__name__)

# JSON-RPC 2.0 error codes used by CometBFT.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
_MESSAGES = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
}
ZERO_TIME = "1970-01-01T00:00:00Z"


class RPCMethodError(Exception):
    """An RPC method failed; carries the JSON-RPC code and CometBFT's data string."""

    def __init__(self, code: int, data: str):
        super().__init__(data)
        self.code = code
        self.data = data


class _Server(ServiceHTTPServer):
    node: ValidatorNode


def serve_all(node: ValidatorNode) -> list[_Server]:
    """Start the RPC, p2p and metrics servers of ``node`` in daemon threads and return them."""
    servers = []
    for kind, handler in (("rpc", _RPCHandler), ("p2p", _P2PHandler), ("metrics", _MetricsHandler)):
        server = _Server(("127.0.0.1", node.spec.ports[kind]), handler)
        server.node = node
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"{kind}-server",
                         daemon=True).start()
        servers.append(server)
        logger.info("%s server listening on 127.0.0.1:%d node=%s", kind, node.spec.ports[kind], node.spec.name)
    return servers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes. Without TCP_NODELAY, Nagle's algorithm and the
    # peer's delayed ACK hold the body for about 40 ms on every keep-alive request (measured here).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode())


class _RPCHandler(_Handler):
    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        method = url.path.strip("/")
        params = {k: v[-1].strip('"') for k, v in urllib.parse.parse_qs(url.query).items()}
        if method not in _METHODS:
            self._send(404, f"404 page not found: /{method}\n".encode(), "text/plain; charset=utf-8")
            return
        try:
            result = _METHODS[method](self.server.node, params)
        except RPCMethodError as exc:
            self._send_json(500, _error_envelope(-1, exc.code, exc.data))
            return
        self._send_json(200, {"jsonrpc": "2.0", "id": -1, "result": result})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            request = json.loads(self.rfile.read(length) or b"null")
        except ValueError as exc:
            self._send_json(500, _error_envelope(None, PARSE_ERROR, f"error unmarshaling request: {exc}"))
            return
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(request.get("method"), str):
            self._send_json(500, _error_envelope(None, INVALID_REQUEST, "expected a JSON-RPC 2.0 request object"))
            return
        request_id = request.get("id")
        method = request["method"]
        params = request.get("params") or {}
        if method not in _METHODS:
            self._send_json(200, _error_envelope(request_id, METHOD_NOT_FOUND, ""))
            return
        if not isinstance(params, dict):
            self._send_json(200, _error_envelope(request_id, INVALID_PARAMS, "params must be an object"))
            return
        try:
            result = _METHODS[method](self.server.node, {k: str(v) for k, v in params.items()})
        except RPCMethodError as exc:
            self._send_json(200, _error_envelope(request_id, exc.code, exc.data))
            return
        self._send_json(200, {"jsonrpc": "2.0", "id": request_id, "result": result})


class _P2PHandler(_Handler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            message = json.loads(self.rfile.read(length))
        except ValueError:
            self._send_json(400, {"error": "invalid JSON"})
            return
        self.server.node.events.put(("message", message))
        self._send_json(200, {})

    def do_GET(self) -> None:
        node = self.server.node
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/p2p/status":
            height, round_ = node.height_and_round()
            self._send_json(200, {"latest_height": node.store.height(), "height": height, "round": round_,
                                  "catching_up": node.catching_up})
            return
        if url.path == "/p2p/block":
            query = urllib.parse.parse_qs(url.query)
            stored = node.store.load(int(query.get("height", ["0"])[0]))
            if stored is None:
                self._send_json(404, {"error": "block not found"})
                return
            block, block_hash, commit = stored
            self._send_json(200, {"block": block, "block_hash": block_hash, "commit": commit})
            return
        self._send_json(404, {"error": "not found"})


class _MetricsHandler(_Handler):
    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/metrics":
            self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        body = self.server.node.render_metrics().encode()
        self._send(200, body, "text/plain; version=0.0.4; charset=utf-8")


def _error_envelope(request_id, code: int, data: str) -> dict:
    error = {"code": code, "message": _MESSAGES.get(code, "Server error"), "data": data}
    return {"jsonrpc": "2.0", "id": -1 if request_id is None else request_id, "error": error}


# -- RPC methods -----------------------------------------------------------------------


def _health(node: ValidatorNode, params: dict) -> dict:
    return {}


def _node_info(node: ValidatorNode) -> dict:
    spec = node.spec
    return {
        "protocol_version": {"p2p": "8", "block": "11", "app": "1"},
        "id": spec.node_id,
        "listen_addr": f"tcp://127.0.0.1:{spec.ports['p2p']}",
        "network": node.network.chain_id,
        "version": COMETBFT_VERSION,
        "channels": "40202122233038606100",
        "moniker": spec.name,
        "other": {"tx_index": "on", "rpc_address": f"tcp://127.0.0.1:{spec.ports['rpc']}"},
    }


def _status(node: ValidatorNode, params: dict) -> dict:
    latest = node.latest()
    earliest = node.store.load(node.store.base()) if latest else None
    sync_info = {
        "latest_block_hash": latest[1] if latest else "",
        "latest_app_hash": latest[0]["header"]["app_hash"] if latest else "",
        "latest_block_height": latest[0]["header"]["height"] if latest else "0",
        "latest_block_time": latest[0]["header"]["time"] if latest else ZERO_TIME,
        "earliest_block_hash": earliest[1] if earliest else "",
        "earliest_app_hash": earliest[0]["header"]["app_hash"] if earliest else "",
        "earliest_block_height": earliest[0]["header"]["height"] if earliest else "0",
        "earliest_block_time": earliest[0]["header"]["time"] if earliest else ZERO_TIME,
        "catching_up": node.catching_up,
    }
    validator_info = {
        "address": node.spec.address,
        "pub_key": pub_key_json(node.spec),
        "voting_power": str(node.spec.power),
    }
    return {"node_info": _node_info(node), "sync_info": sync_info, "validator_info": validator_info}


def _net_info(node: ValidatorNode, params: dict) -> dict:
    peers = []
    for peer in node.connected_peers():
        spec = peer.spec
        info = {**_node_info(node), "id": spec.node_id, "moniker": spec.name,
                "listen_addr": f"tcp://127.0.0.1:{spec.ports['p2p']}"}
        info["other"] = {"tx_index": "on", "rpc_address": f"tcp://127.0.0.1:{spec.ports['rpc']}"}
        peers.append({
            "node_info": info,
            "is_outbound": spec.index > node.spec.index,
            "connection_status": {"Duration": "0", "SendMonitor": {}, "RecvMonitor": {}, "Channels": []},
            "remote_ip": "127.0.0.1",
        })
    return {
        "listening": True,
        "listeners": [f"Listener(@tcp://127.0.0.1:{node.spec.ports['p2p']})"],
        "n_peers": str(len(peers)),
        "peers": peers,
    }


def _block(node: ValidatorNode, params: dict) -> dict:
    latest_height = node.store.height()
    height = _height_param(params, latest_height)
    base = node.store.base()
    if height < base:
        raise RPCMethodError(INTERNAL_ERROR, f"height {height} is not available, lowest height is {base}")
    stored = node.store.load(height)
    if stored is None:
        raise RPCMethodError(INTERNAL_ERROR, f"height {height} is not available, lowest height is {base}")
    block, block_hash, _ = stored
    return {"block_id": block_id(block_hash), "block": block}


def _abci_info(node: ValidatorNode, params: dict) -> dict:
    latest = node.latest()
    return {"response": {
        "data": APP_NAME,
        "version": APP_VERSION,
        "app_version": "1",
        "last_block_height": latest[0]["header"]["height"] if latest else "0",
        "last_block_app_hash": app_hash_base64(latest[0]) if latest else "",
    }}


def _dump_consensus_state(node: ValidatorNode, params: dict) -> dict:
    """Return a subset of CometBFT's dump_consensus_state: this node's round state and its peers."""
    state = node.consensus
    if state is None:
        return {"round_state": {"height/round/step": f"{node.store.height() + 1}/0/0", "catching_up": True},
                "peers": []}
    step_numbers = {"NewHeight": 1, "Propose": 3, "Prevote": 4, "Precommit": 6, "Commit": 8}
    votes = []
    for round_ in sorted(set(state.prevotes) | set(state.precommits)):
        prevotes = state.prevotes.get(round_)
        precommits = state.precommits.get(round_)
        votes.append({
            "round": round_,
            "prevotes": sorted(f"{v['validator'][:12]}:{v['block_hash'][:12] or 'nil'}" for v in (prevotes.votes.values() if prevotes else [])),
            "precommits": sorted(f"{v['validator'][:12]}:{v['block_hash'][:12] or 'nil'}" for v in (precommits.votes.values() if precommits else [])),
        })
    round_state = {
        "height/round/step": f"{state.height}/{state.round}/{step_numbers[state.step.value]}",
        "height": str(state.height),
        "round": state.round,
        "step": step_numbers[state.step.value],
        "proposer": {"address": state.proposer(), "index": [v.address for v in state.validators].index(state.proposer())},
        "locked_round": state.locked_round,
        "locked_block_hash": state.locked_hash,
        "valid_round": state.valid_round,
        "valid_block_hash": state.valid_hash,
        "votes": votes,
    }
    peers = [{"node_address": f"{peer.spec.node_id}@127.0.0.1:{peer.spec.ports['p2p']}", "connected": peer.connected()}
             for peer in node.peers.values()]
    return {"round_state": round_state, "peers": peers}


def _height_param(params: dict, latest_height: int) -> int:
    """Parse ``height`` like CometBFT: absent means latest, and it must be within 1..latest."""
    raw = params.get("height")
    if raw in (None, "", "null"):
        if latest_height == 0:
            raise RPCMethodError(INTERNAL_ERROR, "height must be greater than 0, but got 0")
        return latest_height
    try:
        height = int(raw)
    except ValueError:
        raise RPCMethodError(INVALID_PARAMS, f"error converting http params to arguments: invalid height {raw!r}") from None
    if height <= 0:
        raise RPCMethodError(INTERNAL_ERROR, f"height must be greater than 0, but got {height}")
    if height > latest_height:
        raise RPCMethodError(
            INTERNAL_ERROR, f"height {height} must be less than or equal to the current blockchain height {latest_height}"
        )
    return height


_METHODS = {
    "health": _health,
    "status": _status,
    "net_info": _net_info,
    "block": _block,
    "abci_info": _abci_info,
    "dump_consensus_state": _dump_consensus_state,
}

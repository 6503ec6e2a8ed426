"""CometBFT RPC client: typed `/status`, `/net_info`, `/block`, `/abci_info` and JSON-RPC POST.

Talks HTTP to a node's RPC port (26657 upstream) and turns every failure into a ProbeError subclass.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import logging
import re
import time
import urllib.parse
from typing import Any, NamedTuple

import requests
import urllib3.exceptions

from ..errors import (
    ConfigError,
    ProbeError,
    RPCConnectionRefused,
    RPCError,
    RPCHTTPError,
    RPCTimeout,
)

__all__ = [
    "ABSENT",
    "COMMIT",
    "NIL",
    "CometBFTClient",
    "NodeStatus",
    "NetInfo",
    "Peer",
    "Block",
    "CommitSig",
    "parse_time",
    "probe_status",
]

logger = logging.getLogger(__name__)

#: ``block_id_flag`` values of a commit signature (CometBFT types.BlockIDFlag).
ABSENT = 1  # the validator's precommit did not arrive: a missed block
COMMIT = 2  # the validator precommitted this block
NIL = 3  # the validator precommitted nil
DEFAULT_TIMEOUT = 2.0
#: Characters of a non-JSON-RPC body kept in RPCHTTPError.body and its message.
BODY_EXCERPT_CHARS = 200
STATUS_HINT = "Check the targets with `incidentlab lab status`."
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)
_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
    dict: "an object",
    _dt.datetime: "an RFC 3339 time",
}
_RPC_HINTS = {
    -32700: "the request body is not valid JSON",
    -32600: "the request is not a valid JSON-RPC 2.0 request",
    -32601: "check the method name. GET / on the RPC port lists the routes that the node serves",
    -32602: "check the parameter names and values",
    -32603: "the data field says why the node could not serve the request. For a height error, ask "
    "for a height from earliest_block_height to latest_block_height of status()",
    -32000: "the node failed while serving the request, so read its log",
}


@dataclasses.dataclass(frozen=True)
class NodeStatus:
    """Result of `GET /status`: node_info, sync_info and validator_info, with typed values."""

    node_id: str
    moniker: str
    network: str
    version: str
    latest_block_height: int
    latest_block_time: _dt.datetime
    latest_block_hash: str
    earliest_block_height: int
    catching_up: bool
    validator_address: str
    voting_power: int
    raw: dict = dataclasses.field(repr=False, compare=False)


class Peer(NamedTuple):
    """One entry of `/net_info` peers."""

    node_id: str
    moniker: str
    remote_ip: str


@dataclasses.dataclass(frozen=True)
class NetInfo:
    """Result of `GET /net_info`: whether the node listens, and its peers."""

    listening: bool
    n_peers: int
    peers: list[Peer]
    raw: dict = dataclasses.field(repr=False, compare=False)


class CommitSig(NamedTuple):
    """One signature of a block's last_commit, whose ``block_id_flag`` is ABSENT, COMMIT or NIL."""

    validator_address: str
    block_id_flag: int


@dataclasses.dataclass(frozen=True)
class Block:
    """Result of `GET /block`: header fields, transaction count and the last commit's signatures.

    ``last_commit_signatures`` are the precommits for the previous height (height - 1).
    """

    height: int
    time: _dt.datetime
    hash: str
    chain_id: str
    proposer_address: str
    num_txs: int
    last_commit_signatures: list[CommitSig]
    raw: dict = dataclasses.field(repr=False, compare=False)


class CometBFTClient:
    """HTTP client of one CometBFT RPC endpoint, like `curl http://127.0.0.1:26657/status`.

    Takes the RPC base URL such as ``http://127.0.0.1:26657`` and the connect and read
    timeout in seconds. A ``tcp://`` URL, as in CometBFT's ``laddr``, is read as ``http://``. Every method raises
    RPCConnectionRefused, RPCTimeout, RPCError or RPCHTTPError (all ProbeError) on failure,
    and ProbeError for other connection failures. Use it as a context manager, or call
    close(), so that its pooled sockets are closed.
    """

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT):
        self.url = _normalize_url(url)
        self.timeout = _check_timeout(timeout)
        self._safe_url = _redact(self.url)
        self._ids = itertools.count(1)
        self._session = requests.Session()

        # A proxy from HTTP_PROXY must not swallow requests to the lab's own loopback nodes.
        if urllib.parse.urlsplit(self.url).hostname in _LOOPBACK_HOSTS:
            self._session.trust_env = False

    def __repr__(self) -> str:
        return f"CometBFTClient({self._safe_url!r}, timeout={self.timeout})"

    def __enter__(self) -> "CometBFTClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections. Calling it again does nothing."""
        self._session.close()

    def health(self) -> None:
        """Check `GET /health`, which returns ``{}`` whenever the RPC server is up.

        Returns None, and raises a ProbeError subclass when the node does not respond. A
        halted chain still passes, so compare heights to see progress.
        """
        self._get("/health")

    def status(self) -> NodeStatus:
        """Fetch `GET /status` and return it as a NodeStatus. Raises a ProbeError subclass."""
        result = self._get("/status")
        field = _FieldReader(self._safe_url + "/status", result)
        return NodeStatus(
            node_id=field("node_info.id", str),
            moniker=field("node_info.moniker", str),
            network=field("node_info.network", str),
            version=field("node_info.version", str),
            latest_block_height=field("sync_info.latest_block_height", int),
            latest_block_time=field("sync_info.latest_block_time", _dt.datetime),
            latest_block_hash=field("sync_info.latest_block_hash", str),
            earliest_block_height=field("sync_info.earliest_block_height", int),
            catching_up=field("sync_info.catching_up", bool),
            validator_address=field("validator_info.address", str),
            voting_power=field("validator_info.voting_power", int),
            raw=result,
        )

    def net_info(self) -> NetInfo:
        """Fetch `GET /net_info` and return it as a NetInfo. Raises a ProbeError subclass."""
        result = self._get("/net_info")
        field = _FieldReader(self._safe_url + "/net_info", result)
        peers = [
            Peer(
                node_id=field(f"peers.{i}.node_info.id", str),
                moniker=field(f"peers.{i}.node_info.moniker", str),
                remote_ip=field(f"peers.{i}.remote_ip", str),
            )
            for i in range(len(field("peers", list)))
        ]
        return NetInfo(
            listening=field("listening", bool),
            n_peers=field("n_peers", int),
            peers=peers,
            raw=result,
        )

    def block(self, height: int | None = None) -> Block:
        """Fetch `GET /block?height=N` (the latest block when height is None) as a Block.

        Raises TypeError when height is not an int, RPCError when the node does not have
        that height (its ``data`` names the available range), or another ProbeError subclass.
        """
        if height is not None and (isinstance(height, bool) or not isinstance(height, int)):
            raise TypeError(
                f"height={height!r} is not a block height. Pass an int such as 5, or None for the latest."
            )
        params = None if height is None else {"height": str(height)}
        result = self._get("/block", params)
        field = _FieldReader(self._safe_url + "/block", result)
        signatures = [
            CommitSig(
                validator_address=field(f"block.last_commit.signatures.{i}.validator_address", str),
                block_id_flag=field(f"block.last_commit.signatures.{i}.block_id_flag", int),
            )
            for i in range(len(field("block.last_commit.signatures", list)))
        ]
        return Block(
            height=field("block.header.height", int),
            time=field("block.header.time", _dt.datetime),
            hash=field("block_id.hash", str),
            chain_id=field("block.header.chain_id", str),
            proposer_address=field("block.header.proposer_address", str),
            num_txs=len(field("block.data.txs", list)),
            last_commit_signatures=signatures,
            raw=result,
        )

    def abci_info(self) -> dict:
        """Fetch `GET /abci_info` and return its ``response`` dict.

        ``last_block_height`` and ``app_version`` become ints when present. The other values
        stay as the node sent them. Raises a ProbeError subclass.
        """
        result = self._get("/abci_info")
        field = _FieldReader(self._safe_url + "/abci_info", result)
        response = dict(field("response", dict))
        for key in ("last_block_height", "app_version"):
            if key in response:
                response[key] = field(f"response.{key}", int)
        return response

    def call(self, method: str, **params: Any) -> dict:
        """Send a JSON-RPC 2.0 POST calling ``method`` and return its ``result`` dict.

        Python ints in ``params`` are sent as JSON strings (``{"height": "5"}``), because
        CometBFT's JSON encoding carries every int64 as a string. Raises RPCError when the node returns an
        error object, or another ProbeError subclass.
        """
        request_id = next(self._ids)
        encoded = {
            key: str(value) if isinstance(value, int) and not isinstance(value, bool) else value
            for key, value in params.items()
        }
        payload = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": encoded}
        url = self._safe_url + "/"
        label = f"{url} (POST {method})"
        envelope = self._request("POST", "/", label, json=payload)
        if envelope.get("id") != request_id:
            raise RPCHTTPError(
                url,
                f"{label} answered JSON-RPC id {envelope.get('id')!r} to request id {request_id}, "
                f"so something other than a CometBFT node answers on this port. {STATUS_HINT}",
                status=200,
                body=repr(envelope)[:BODY_EXCERPT_CHARS],
            )
        return envelope["result"]

    def _get(self, path: str, params: dict | None = None) -> Any:
        return self._request("GET", path, self._safe_url + path, params=params)["result"]

    def _request(self, verb: str, path: str, label: str, **kwargs: Any) -> dict:
        """Send one request and return the JSON-RPC envelope, which has a ``result`` key.

        ``label`` names the request in messages: the URL, plus the method of a POST.
        """
        url = self._safe_url + path
        started = time.perf_counter()
        for attempt in (1, 2):
            try:
                response = self._session.request(verb, self.url + path, timeout=self.timeout, **kwargs)
                break
            except requests.RequestException as exc:
                # A kept-alive connection that the node closed (it stopped or restarted) fails
                # on reuse. A GET is safe to send once more, on a new connection.
                if attempt == 1 and verb == "GET" and _closed_by_peer(exc):
                    logger.debug("%s: connection closed by the node, retrying on a new connection", label)
                    continue
                raise _classify_exception(exc, url, label, self.timeout) from exc
        logger.debug(
            "%s %s -> HTTP %d in %.3f s", verb, label, response.status_code, time.perf_counter() - started
        )
        return _parse_envelope(response, url, label)


def probe_status(url: str, timeout: float = 1.0, *, client: CometBFTClient | None = None) -> dict:
    """Probe `GET /status` once and return the sample as a dict, without raising on failure.

    Takes the RPC URL, the timeout in seconds and optionally an open client to reuse (its
    own timeout then applies). The sample has ``time`` (UTC, when the answer or the failure
    arrived), ``url``, ``ok``, ``height`` (int or None), ``catching_up`` (bool or None),
    ``latency_s``, ``error`` and ``detail`` (the error message, None when ok). ``error`` is
    None, "refused", "timeout", "http" (an HTTP error, a non-JSON body or an answer that is
    not CometBFT's shape), "rpc" (a JSON-RPC error object) or "connection" (another
    connection failure, such as a reset). Only an invalid url or timeout raises ConfigError.
    """
    own_client = client is None
    if own_client:
        client = CometBFTClient(url, timeout=timeout)
    sample = {"url": _redact(client.url), "ok": False, "height": None, "catching_up": None}
    started = time.perf_counter()
    try:
        status = client.status()
    except ProbeError as exc:
        sample.update(error=_error_kind(exc), detail=str(exc))
    else:
        sample.update(ok=True, height=status.latest_block_height, catching_up=status.catching_up)
        sample.update(error=None, detail=None)
    finally:
        if own_client:
            client.close()
    sample["latency_s"] = time.perf_counter() - started
    sample["time"] = _dt.datetime.now(_dt.timezone.utc)
    return sample


def parse_time(text: str) -> _dt.datetime:
    """Parse an RFC 3339 time such as ``2024-05-01T12:00:00.123456789Z`` into an aware UTC datetime.

    CometBFT writes nanoseconds, and datetime keeps microseconds, so the last three digits
    are truncated. Raises ValueError naming the text when it is not RFC 3339.
    """
    match = _RFC3339.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time like 2024-05-01T12:00:00.123456789Z")
    date, clock, fraction, offset = match.groups()
    micros = (fraction or "")[:6].ljust(6, "0")
    offset = "+00:00" if offset in ("Z", "z") else offset
    parsed = _dt.datetime.fromisoformat(f"{date}T{clock}.{micros}{offset}")
    return parsed.astimezone(_dt.timezone.utc)


class _FieldReader:
    """Typed access to dotted paths of a result, raising RPCHTTPError that names the missing field."""

    def __init__(self, label: str, result: Any):
        self.label = label
        self.result = result

    def _value(self, path: str) -> Any:
        value = self.result
        for part in path.split("."):
            try:
                value = value[int(part)] if isinstance(value, list) else value[part]
            except (KeyError, IndexError, TypeError, ValueError):
                raise self._invalid(path, "is missing") from None
        return value

    def _invalid(self, path: str, problem: str) -> RPCHTTPError:
        return RPCHTTPError(
            self.label,
            f"the answer of {self.label} is not a CometBFT RPC result because field {path} {problem}. "
            f"Check that the URL points at a CometBFT RPC port. {STATUS_HINT}",
            status=200,
            body=repr(self.result)[:BODY_EXCERPT_CHARS],
        )

    def __call__(self, path: str, kind: type) -> Any:
        """Return the value at ``path`` as ``kind`` (str, int, bool, list, dict or datetime)."""
        value = self._value(path)
        if kind is list and value is None:
            return []  # CometBFT encodes an empty slice as null (block.data.txs of an empty block)
        if kind is int and isinstance(value, str) and re.fullmatch(r"-?\d+", value):
            return int(value)  # int64 values arrive as JSON strings ("1262")
        if kind is _dt.datetime and isinstance(value, str):
            try:
                return parse_time(value)
            except ValueError:
                pass
        elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        raise self._invalid(path, f"is {value!r}, expected {_KIND_NAMES[kind]}")


def _parse_envelope(response: requests.Response, url: str, label: str) -> dict:
    """Return the JSON-RPC envelope, or raise RPCError or RPCHTTPError."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        raise _rpc_error(body["error"], url, label, response.status_code)
    if response.ok and isinstance(body, dict) and "result" in body:
        return body

    excerpt = response.text[:BODY_EXCERPT_CHARS]
    body_kind = "a body that is not JSON" if body is None else "JSON without a JSON-RPC result"
    raise RPCHTTPError(
        url,
        f"{label} returned HTTP {response.status_code} with {body_kind}: {excerpt!r}. A proxy or gateway "
        f"answered in place of the node, or this is not a CometBFT RPC port. {STATUS_HINT}",
        status=response.status_code,
        body=excerpt,
    )


def _rpc_error(error: dict, url: str, label: str, status: int) -> RPCError:
    code = error.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else -32603
    message = str(error.get("message", ""))
    data = "" if error.get("data") is None else str(error["data"])
    exc = RPCError(url, code, message, data, status)

    # RPCError builds a message without the request's method or a next step, so replace it.
    hint = _RPC_HINTS.get(code, "read the data field and the node's log")
    detail = f": {data}" if data else ""
    exc.args = (f"JSON-RPC error {code} ({message}) from {label}{detail}. {hint[0].upper()}{hint[1:]}.",)
    return exc


def _classify_exception(exc: requests.RequestException, url: str, label: str, timeout: float) -> ProbeError:
    """Map a requests exception to RPCConnectionRefused, RPCTimeout or ProbeError."""
    causes = _causes(exc)
    address = urllib.parse.urlsplit(url).netloc
    if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
        return RPCConnectionRefused(
            url,
            f"connection refused by {address} ({label}): nothing listens on that port, so the node "
            f"is stopped or the port is wrong. {STATUS_HINT}",
        )

    if isinstance(exc, requests.ConnectTimeout):
        return RPCTimeout(
            url,
            f"connecting to {address} ({label}) timed out after {timeout} s because the host does not "
            f"answer. Check the address. {STATUS_HINT}",
            timeout,
        )

    # requests raises ConnectionError, not ReadTimeout, when the timeout hits while reading the body.
    read_timeout = isinstance(exc, requests.ReadTimeout) or any(
        isinstance(cause, urllib3.exceptions.ReadTimeoutError) for cause in causes
    )
    if read_timeout:
        return RPCTimeout(
            url,
            f"{label} accepted the connection but sent no answer within {timeout} s, so the node is "
            f"frozen (paused) or overloaded. {STATUS_HINT} A slow node may need a longer timeout.",
            timeout,
        )
    return ProbeError(
        url, f"request to {label} failed: {exc}. The node may have crashed during the request. {STATUS_HINT}"
    )


def _causes(exc: BaseException) -> list[BaseException]:
    """Return exc and every exception it wraps (args, urllib3 ``reason``, __cause__, __context__)."""
    seen: list[BaseException] = []
    pending = [exc]
    while pending:
        current = pending.pop()
        if any(current is known for known in seen):
            continue
        seen.append(current)
        linked = [getattr(current, "reason", None), current.__cause__, current.__context__, *current.args]
        pending.extend(item for item in linked if isinstance(item, BaseException))
    return seen


def _closed_by_peer(exc: requests.RequestException) -> bool:
    """Return whether the node reset or closed the connection without a response."""
    causes = _causes(exc)
    if any(isinstance(cause, urllib3.exceptions.ReadTimeoutError) for cause in causes):
        return False
    return any(isinstance(cause, (ConnectionResetError, BrokenPipeError)) for cause in causes)


def _error_kind(exc: ProbeError) -> str:
    kinds = {RPCConnectionRefused: "refused", RPCTimeout: "timeout", RPCHTTPError: "http", RPCError: "rpc"}
    return next((kind for cls, kind in kinds.items() if isinstance(exc, cls)), "connection")


def _normalize_url(url: str) -> str:
    if not isinstance(url, str):
        raise ConfigError(f"RPC url {url!r} is not a string. Use one like http://127.0.0.1:26657")
    text = url.strip().rstrip("/")
    if text.startswith("tcp://"):
        text = "http://" + text[len("tcp://") :]
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"RPC url {url!r} is invalid. Use one like http://127.0.0.1:26657")
    return text


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigError(
            f"timeout={timeout!r} is invalid. Use a number of seconds greater than 0, such as 2.0"
        )
    return float(timeout)


def _redact(url: str) -> str:
    """Return url without user:password, for log lines and messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

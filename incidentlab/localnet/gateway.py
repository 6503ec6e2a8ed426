"""The localnet's API gateway: Cosmos SDK REST and a CometBFT RPC proxy on 127.0.0.1, in front of one validator.

It reaches its upstream validator's RPC port, through a fault proxy while a latency fault routes
it, and turns a frozen upstream into HTTP 504 and a dead one into HTTP 502. Standard library only.
Usage: ``python -m incidentlab.localnet.gateway --network FILE --name virtengine-gateway``
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from . import cosmos_rest
from .metrics import Counter, Histogram, Registry
from .network import DEFAULT_UPSTREAM_TIMEOUT, Network, ServiceSpec, ValidatorSpec, load_network
from .httpserver import ServiceHTTPServer
from .servicemain import configure_logging, service_parser, stop_on_signals
from .routes import RouteCache

__all__ = ["Gateway", "Upstream", "UpstreamError", "upstream_timeout", "watch_network_file", "main"]

# Run with -m, __name__ is "__main__": name the logger after the module instead.
logger = logging.getLogger("incidentlab.localnet.gateway")

ROUTE_SYNCING = f"{cosmos_rest.REST_PREFIX}/syncing"
ROUTE_NODE_INFO = f"{cosmos_rest.REST_PREFIX}/node_info"
ROUTE_LATEST_BLOCK = f"{cosmos_rest.REST_PREFIX}/blocks/latest"
RPC_PREFIX = "/rpc/"
#: Handler label of an RPC method outside RPC_METHODS and of a path the gateway does not serve,
#: so that the label keeps a small, fixed set of values whatever clients request.
RPC_OTHER_HANDLER = "/rpc/{method}"
OTHER_HANDLER = "other"
#: CometBFT's URI RPC methods (v0.38), each labelled with its own handler.
RPC_METHODS = frozenset({
    "abci_info", "abci_query", "block", "block_by_hash", "block_results", "block_search", "blockchain",
    "broadcast_evidence", "broadcast_tx_async", "broadcast_tx_commit", "broadcast_tx_sync", "check_tx",
    "commit", "consensus_params", "consensus_state", "dump_consensus_state", "genesis", "genesis_chunked",
    "header", "header_by_hash", "health", "net_info", "num_unconfirmed_txs", "status", "tx", "tx_search",
    "unconfirmed_txs", "validators",
})
#: Status codes whose http_requests_total series exist from the start, at zero.
INITIAL_CODES = ("200", "502", "504")
#: Floor of the upstream timeout after time scaling, in seconds: a healthy validator responds
#: within a few milliseconds, but a loaded machine needs some slack.
MIN_UPSTREAM_TIMEOUT = 0.2
#: The default buckets of the Prometheus client libraries, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: Seconds an idle keep-alive connection of a client is kept open.
IDLE_TIMEOUT = 60.0
#: Maximum idle keep-alive connections to the upstream kept for reuse. A new connection per
#: request cost about 0.5 ms on loopback (see benchmarks/RESULTS.md).
MAX_IDLE_UPSTREAM_CONNECTIONS = 4
#: Seconds between two checks that the network file still exists.
NETWORK_FILE_CHECK_INTERVAL = 0.5
JSON_TYPE = "application/json"


class UpstreamError(Exception):
    """The upstream validator gave no HTTP response. ``kind`` is "timeout", "refused" or "error"."""

    def __init__(self, kind: str, upstream: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.upstream = upstream


class Upstream:
    """The validator behind the gateway, reached over HTTP on its RPC port (or its latency fault's proxy).

    Takes the validator's spec, the route cache of the localnet and the timeout in seconds, which
    bounds the connect and each read like nginx's proxy_connect_timeout and proxy_read_timeout.
    """

    def __init__(self, spec: ValidatorSpec, routes: RouteCache, timeout: float):
        self.spec = spec
        self.routes = routes
        self.timeout = timeout
        self._lock = threading.Lock()
        self._outcome = "unknown"
        self._idle: list[http.client.HTTPConnection] = []

    def get(self, path: str) -> tuple[int, str, bytes]:
        """Send GET ``path`` (with its query) to the upstream's RPC and return (status, content type, body).

        An idle kept-alive connection is reused when there is one. Raises UpstreamError when no
        response arrives: "timeout" for a frozen upstream, "refused" when nothing listens (a
        stopped one), "error" for a reset or an incomplete response.
        """
        port = self.routes.port(self.spec.name, "rpc", self.spec.ports["rpc"])
        connection = self._idle_connection(port)
        if connection is not None:
            try:
                return self._exchange(connection, port, path)
            except TimeoutError as exc:
                # A frozen upstream: a retry would only double the wait before the 504.
                connection.close()
                raise self._failed("timeout", port, f"no response within {self.timeout:.2f} s ({exc})") from exc
            except (OSError, http.client.HTTPException):
                # The upstream closed the idle connection (it restarted, stopped or timed it
                # out), so the request goes once more on a new connection. A stopped upstream
                # then refuses it, which gives the 502.
                connection.close()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
        try:
            return self._exchange(connection, port, path)
        except TimeoutError as exc:
            connection.close()
            raise self._failed("timeout", port, f"no response within {self.timeout:.2f} s ({exc})") from exc
        except ConnectionRefusedError as exc:
            connection.close()
            raise self._failed("refused", port, f"connection refused ({exc})") from exc
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise self._failed("error", port, f"{type(exc).__name__}: {exc}") from exc

    def result(self, method: str) -> dict:
        """Call the RPC method ``method`` and return its JSON-RPC result.

        Raises UpstreamError as get() does, and ValueError when the upstream responds with an
        error or a body that is not a JSON-RPC result.
        """
        status, _, body = self.get(f"/{method}")
        try:
            envelope = json.loads(body)
        except ValueError as exc:
            raise ValueError(f"{self.spec.name} returned HTTP {status} for /{method} with a body that is not JSON") from exc
        if status != 200 or "result" not in envelope:
            error = envelope.get("error", {}) if isinstance(envelope, dict) else {}
            raise ValueError(f"{self.spec.name} returned HTTP {status} for /{method}: "
                             f"{error.get('message', 'no result')} {error.get('data', '')}".rstrip())
        return envelope["result"]

    def _exchange(self, connection: http.client.HTTPConnection, port: int, path: str) -> tuple[int, str, bytes]:
        """Send GET ``path`` on ``connection``, keep the connection for reuse, return (status, content type, body)."""
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.will_close:
            connection.close()
        else:
            self._release(connection, port)
        self._record("ok", port, f"HTTP {response.status}")
        return response.status, response.getheader("Content-Type", JSON_TYPE), body

    def _idle_connection(self, port: int) -> http.client.HTTPConnection | None:
        """Return an idle connection to ``port`` for reuse, or None; idle ones to other ports are closed."""
        with self._lock:
            stale = [c for c in self._idle if c.port != port]
            self._idle = [c for c in self._idle if c.port == port]
            connection = self._idle.pop() if self._idle else None
        for old in stale:  # a latency fault's route moved the upstream to another port
            old.close()
        return connection

    def _release(self, connection: http.client.HTTPConnection, port: int) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE_UPSTREAM_CONNECTIONS:
                self._idle.append(connection)
                return
        connection.close()

    def _failed(self, kind: str, port: int, detail: str) -> UpstreamError:
        self._record(kind, port, detail)
        return UpstreamError(kind, self.spec.name, f"upstream {self.spec.name} on 127.0.0.1:{port}: {detail}")

    def _record(self, outcome: str, port: int, detail: str) -> None:
        # One log line per change of outcome (ok, timeout, refused, error), not one per request.
        with self._lock:
            previous, self._outcome = self._outcome, outcome
        if previous == outcome:
            return
        level = logging.INFO if outcome == "ok" else logging.WARNING
        logger.log(level, "upstream %s on 127.0.0.1:%d is now %s (was %s): %s",
                   self.spec.name, port, outcome, previous, detail)


class Gateway:
    """Routes, upstream and metrics of one gateway; the HTTP servers call handle() and render_metrics().

    Takes the network and the gateway's spec. Raises ValueError when the spec's upstream is not
    a validator of the network.
    """

    def __init__(self, network: Network, spec: ServiceSpec):
        self.spec = spec
        upstream_name = spec.options.get("upstream") or network.validators[0].name
        try:
            upstream_spec = network.validator(upstream_name)
        except KeyError:
            names = ", ".join(v.name for v in network.validators)
            raise ValueError(f"gateway {spec.name}: upstream {upstream_name!r} is not a validator of the network; "
                             f"known validators: {names}") from None
        timeout = upstream_timeout(spec.options.get("upstream_timeout", DEFAULT_UPSTREAM_TIMEOUT), network.time_scale)
        self.upstream = Upstream(upstream_spec, RouteCache(Path(network.path).parent), timeout)
        self.registry = Registry()
        self.requests = self.registry.register(Counter(
            "http_requests_total", "HTTP requests answered by the gateway, by status code, method and route."))
        self.durations = self.registry.register(Histogram(
            "http_request_duration_seconds", "Time the gateway took to answer a request, by method and route.",
            DURATION_BUCKETS))
        # Create the series of the codes an upstream failure produces at zero. Prometheus's
        # increase() never counts a series' first sample, so a 504 series born mid-incident
        # would lose its first burst of errors.
        for handler in (ROUTE_SYNCING, ROUTE_NODE_INFO, ROUTE_LATEST_BLOCK, f"{RPC_PREFIX}status"):
            for code in INITIAL_CODES:
                self.requests.inc(0, code=code, method="GET", handler=handler)
        # The last error logged per route, so that a repeated error is logged once, not per request.
        self._route_errors: dict[str, str] = {}

    def handle(self, path: str, query: str) -> tuple[str, int, str, bytes]:
        """Handle GET ``path``?``query`` and return (handler label, HTTP status, content type, body)."""
        if path == ROUTE_SYNCING:
            return self._rest(path, lambda: cosmos_rest.syncing_response(self.upstream.result("status")))
        if path == ROUTE_NODE_INFO:
            return self._rest(path, lambda: cosmos_rest.node_info_response(
                self.upstream.result("status"), self.upstream.result("abci_info")))
        if path == ROUTE_LATEST_BLOCK:
            return self._rest(path, lambda: cosmos_rest.latest_block_response(self.upstream.result("block")))
        if path.startswith(RPC_PREFIX):
            return self._proxy(path[len(RPC_PREFIX):], query)
        body = cosmos_rest.error_response(cosmos_rest.GRPC_NOT_FOUND, "Not Found")
        return OTHER_HANDLER, 404, JSON_TYPE, _json(body)

    def observe(self, handler: str, method: str, status: int, seconds: float) -> None:
        """Count one request and its duration in the metrics."""
        self.requests.inc(code=str(status), method=method, handler=handler)
        self.durations.observe(seconds, method=method, handler=handler)

    def render_metrics(self) -> str:
        return self.registry.render()

    def _rest(self, handler: str, build) -> tuple[str, int, str, bytes]:
        try:
            body = _json(build())
        except UpstreamError as exc:
            return (handler, *self._upstream_failure(exc))
        except (ValueError, KeyError, TypeError) as exc:
            if self._route_errors.get(handler) != str(exc):
                logger.warning("route %s failed with HTTP 500: %s", handler, exc)
            self._route_errors[handler] = str(exc)
            return handler, 500, JSON_TYPE, _json(cosmos_rest.error_response(cosmos_rest.GRPC_INTERNAL, str(exc)))
        self._route_errors.pop(handler, None)
        return handler, 200, JSON_TYPE, body

    def _proxy(self, method: str, query: str) -> tuple[str, int, str, bytes]:
        handler = f"{RPC_PREFIX}{method}" if method in RPC_METHODS else RPC_OTHER_HANDLER
        target = f"/{urllib.parse.quote(method, safe='_')}" + (f"?{query}" if query else "")
        try:
            status, content_type, body = self.upstream.get(target)
        except UpstreamError as exc:
            return (handler, *self._upstream_failure(exc))
        return handler, status, content_type, body

    def _upstream_failure(self, exc: UpstreamError) -> tuple[int, str, bytes]:
        # Like nginx: 504 when the upstream does not respond in time, 502 when it cannot be reached.
        if exc.kind == "timeout":
            body = {"error": "upstream timed out", "upstream": exc.upstream, "timeout_seconds": self.upstream.timeout}
            return 504, JSON_TYPE, _json(body)
        reason = "upstream refused the connection" if exc.kind == "refused" else "upstream connection failed"
        return 502, JSON_TYPE, _json({"error": reason, "upstream": exc.upstream})


def upstream_timeout(seconds: float, time_scale: float) -> float:
    """Return the gateway's upstream timeout: ``seconds`` times ``time_scale``, at least 0.2 s."""
    return max(MIN_UPSTREAM_TIMEOUT, float(seconds) * time_scale)


def watch_network_file(path: str, stopped: threading.Event, name: str) -> threading.Thread:
    """Set ``stopped`` once the network file at ``path`` is gone; return the daemon thread that checks it.

    A deleted lab home (a wiped temporary folder) leaves nothing that could manage the process,
    so it stops rather than run on as an orphan, as the validators do.
    """
    def watch() -> None:
        while not stopped.wait(NETWORK_FILE_CHECK_INTERVAL):
            if not Path(path).exists():
                logger.error("network file %s is gone; shutting down %s", path, name)
                stopped.set()

    thread = threading.Thread(target=watch, name="network-file-watch", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    """Run the gateway named ``--name`` of the network file ``--network`` until SIGTERM or SIGINT; return the exit code."""
    parser = service_parser("incidentlab.localnet.gateway", __doc__, "virtengine-gateway")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    gateway = _load_gateway(parser, args)
    stopped = threading.Event()
    # The handlers come before the ports accept requests, so a stop right after the start still exits cleanly.
    stop_on_signals(stopped, "gateway", gateway.spec.name)
    try:
        servers = _serve(gateway)
    except OSError as exc:
        logger.error("cannot listen on 127.0.0.1 for %s (ports %s): %s; another process may hold a port",
                     gateway.spec.name, gateway.spec.ports, exc)
        return 1
    watch_network_file(args.network, stopped, gateway.spec.name)
    logger.info("starting gateway=%s upstream=%s upstream_timeout=%.2fs", gateway.spec.name,
                gateway.upstream.spec.name, gateway.upstream.timeout)
    while not stopped.wait(0.2):
        pass
    for server in servers:
        server.shutdown()
        server.server_close()
    logger.info("stopped gateway=%s", gateway.spec.name)
    return 0


def _load_gateway(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Gateway:
    network = load_network(args.network)
    try:
        spec = network.service(args.name)
    except KeyError:
        names = ", ".join(s.name for s in network.services) or "none"
        parser.error(f"no service named {args.name!r} in {args.network}; known services: {names}")
    if spec.kind != "gateway":
        parser.error(f"service {args.name!r} in {args.network} has kind {spec.kind!r}, not 'gateway'")
    try:
        return Gateway(network, spec)
    except ValueError as exc:
        parser.error(str(exc))


class _Server(ServiceHTTPServer):
    gateway: Gateway


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes. Without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK hold the body about 40 ms on every keep-alive request.
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _RestHandler(_Handler):
    def do_GET(self) -> None:
        started = time.monotonic()
        url = urllib.parse.urlsplit(self.path)
        handler, status, content_type, body = self.server.gateway.handle(url.path, url.query)
        try:
            self._send(status, content_type, body)
        finally:
            self.server.gateway.observe(handler, "GET", status, time.monotonic() - started)


class _MetricsHandler(_Handler):
    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/metrics":
            self._send(404, "text/plain; charset=utf-8", b"404 page not found\n")
            return
        self._send(200, Registry.CONTENT_TYPE, self.server.gateway.render_metrics().encode())


def _serve(gateway: Gateway) -> list[_Server]:
    # Both ports are bound before either serves, so a response on /metrics means REST is ready too.
    servers = []
    for kind, handler in (("rest", _RestHandler), ("metrics", _MetricsHandler)):
        server = _Server(("127.0.0.1", gateway.spec.ports[kind]), handler)
        server.gateway = gateway
        servers.append(server)
    for kind, server in zip(("rest", "metrics"), servers):
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"{kind}-server",
                         daemon=True).start()
        logger.info("%s server listening on 127.0.0.1:%d gateway=%s", kind, gateway.spec.ports[kind], gateway.spec.name)
    return servers


def _json(payload: dict) -> bytes:
    return json.dumps(payload).encode()


if __name__ == "__main__":
    sys.exit(main())

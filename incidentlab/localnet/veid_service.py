"""The localnet's VEID scoring service on 127.0.0.1: scoring API, configuration revisions, metrics, background traffic.

numpy, Pillow and the model load on a background thread after the ports are bound, so the
service is ready fast. Usage: ``python -m incidentlab.localnet.veid_service --network FILE --name virtengine-veid``
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import logging
import random
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

from .gateway import watch_network_file
from .httpserver import ServiceHTTPServer
from .servicemain import configure_logging, service_parser, stop_on_signals
from .metrics import Counter, Gauge, Histogram, Registry
from .network import Network, ServiceSpec, load_network

__all__ = ["VeidService", "main", "stream_rate", "score_window"]

# Run with -m, __name__ is "__main__": name the logger after the module instead.
logger = logging.getLogger("incidentlab.localnet.veid_service")

API_PREFIX = "/veid/v1"
APPROVAL_THRESHOLD = 0.75
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0)
#: Verification requests per second of the background stream at time_scale 1, and the maximum
#: after dividing by the time scale (so a compressed lab does not cost a core).
DEFAULT_STREAM_RATE = 1.0
MAX_STREAM_RATE = 8.0
#: Seconds of scores behind virtengine_veid_scoring_score_avg at time_scale 1, and the floor after scaling.
SCORE_WINDOW = 60.0
MIN_SCORE_WINDOW = 5.0
#: Captures the stream draws before it replays them, so that a long run costs scoring only.
CAPTURE_POOL = 128
RECENT_LIMIT = 4000
MAX_BODY = 5 * 1024 * 1024
LOAD_TIMEOUT = 30.0


def stream_rate(rate: float, time_scale: float) -> float:
    """Return the stream's requests per second: ``rate`` divided by ``time_scale``, at most MAX_STREAM_RATE."""
    return min(MAX_STREAM_RATE, rate / time_scale)


def score_window(time_scale: float) -> float:
    """Return the seconds of scores that the score average covers: SCORE_WINDOW scaled, at least MIN_SCORE_WINDOW."""
    return max(MIN_SCORE_WINDOW, SCORE_WINDOW * time_scale)


class VeidService:
    """Scoring, revisions and metrics of one VEID service; the HTTP server calls its methods.

    Takes the network and the service's spec. The model loads in load(), which the main
    function runs on a background thread.
    """

    def __init__(self, network: Network, spec: ServiceSpec):
        from ..veid.revisions import RevisionStore

        self.spec = spec
        self.time_scale = network.time_scale
        self.store = RevisionStore(spec.home)
        self.window = score_window(network.time_scale)
        self.loaded = threading.Event()
        self._lock = threading.Lock()
        self._scores: collections.deque = collections.deque()
        self._recent: collections.deque = collections.deque(maxlen=RECENT_LIMIT)
        self._sequence = 0
        self._active: dict = {}
        self._versions: set[str] = set()
        self._last_failure: tuple[int, str] | None = None
        self.registry = Registry()
        self.score_avg = self.registry.register(Gauge(
            "virtengine_veid_scoring_score_avg", "Mean VEID score over the recent window of verifications."))
        self.score_hist = self.registry.register(Histogram(
            "virtengine_veid_scoring_score", "VEID scores of verifications.", SCORE_BUCKETS))
        self.requests = self.registry.register(Counter(
            "virtengine_veid_scoring_requests_total", "Verification requests scored, by status."))
        self.rejections = self.registry.register(Counter(
            "virtengine_veid_scoring_rejections_total", "Verifications rejected because the score was below 0.75."))
        self.errors = self.registry.register(Counter(
            "virtengine_veid_scoring_errors_total", "Verification requests that could not be scored."))
        self.model_loaded = self.registry.register(Gauge(
            "virtengine_veid_model_loaded", "1 when the current revision's model version is loaded and verified."))
        self.rejections.inc(0)
        self.errors.inc(0)
        for status in ("approved", "rejected", "error"):
            self.requests.inc(0, status=status)

    # -- model and revisions -------------------------------------------------------------

    def load(self) -> None:
        """Import numpy and Pillow and activate the current revision (run once, on a background thread)."""
        started = time.monotonic()
        self._activate(self.store.current())
        self.loaded.set()
        logger.info("scoring ready in %.2f s service=%s revision=%s", time.monotonic() - started,
                    self.spec.name, self._active["revision"]["id"])

    def revisions(self) -> dict:
        return self.store.read()

    def deploy(self, change: dict, author: str, message: str) -> dict:
        """Deploy a new revision with ``change``; raises ValueError for an invalid change."""
        revision = self.store.deploy(change, author, message)
        logger.warning("deployed %s by %s: %s service=%s", revision["id"], author, change, self.spec.name)
        self._activate(revision)
        return revision

    def rollback(self, to: str | None, author: str) -> dict:
        """Roll back to revision ``to`` (default: the previous configuration); raises KeyError or ValueError."""
        revision = self.store.rollback(to, author)
        logger.warning("rolled back to %s as %s by %s service=%s", revision["change"]["rollback_to"],
                       revision["id"], author, self.spec.name)
        self._activate(revision)
        return revision

    def model_check(self) -> dict:
        """Return the current revision's model check (see incidentlab.veid.model.check_model)."""
        from ..veid.model import check_model

        self.loaded.wait(LOAD_TIMEOUT)
        active = self._active
        check = check_model(active["model"], active["revision"]["config"], active["error"])
        return {"revision": active["revision"]["id"], **check}

    def _activate(self, revision: dict) -> None:
        from ..errors import ConfigError, VeidError
        from ..veid.model import load_model
        from ..veid.preprocess import PreprocessConfig

        config = revision["config"]
        model, error = None, ""
        try:
            # Loaded again on every activation, so the hash check reads the file as it is now.
            model = load_model(config.get("model_file") or None, version=config["model_version"])
        except (VeidError, ConfigError) as exc:
            error = str(exc)
            logger.error("model of %s not loaded service=%s: %s", revision["id"], self.spec.name, exc)
        with self._lock:
            self._active = {"revision": revision, "model": model, "error": error,
                            "preprocess": PreprocessConfig(divisor=float(config["divisor"]),
                                                           channel_order=config["channel_order"])}
        # A version that is no longer current keeps its series, at 0.
        for version in self._versions - {config["model_version"]}:
            self.model_loaded.set(0, version=version)
        self._versions.add(config["model_version"])
        self.model_loaded.set(1 if model is not None else 0, version=config["model_version"])

    # -- scoring -------------------------------------------------------------------------

    def score(self, data: bytes, source: str, request_id: str | None = None) -> tuple[int, dict]:
        """Score one capture under the current revision; return (HTTP status, response body)."""
        from ..errors import VeidError
        from ..veid.preprocess import preprocess, tensor_stats

        self.loaded.wait(LOAD_TIMEOUT)
        active = self._active
        with self._lock:
            self._sequence += 1
            request_id = request_id or f"req-{self._sequence:06d}"
        entry = {"time": _now(), "request_id": request_id, "source": source, "revision": active["revision"]["id"]}
        try:
            tensor = preprocess(data, active["preprocess"])
        except VeidError as exc:
            return self._failed(entry, 400, str(exc))
        if active["model"] is None:
            return self._failed(entry, 503, f"model not loaded for {active['revision']['id']}: {active['error']}")
        score = active["model"].score(tensor)
        status = "approved" if score >= APPROVAL_THRESHOLD else "rejected"
        entry.update(score=round(score, 6), status=status, **tensor_stats(tensor))
        self._record(entry)
        return 200, {"request_id": request_id, "score": round(score, 6), "threshold": APPROVAL_THRESHOLD,
                     "status": status, "revision": entry["revision"], "model_version": active["model"].version}

    def recent(self, since: str | None = None, limit: int = RECENT_LIMIT) -> list[dict]:
        """Return the recent verifications, oldest first, newer than the RFC 3339 time ``since``."""
        with self._lock:
            rows = [row for row in self._recent if since is None or row["time"] > since]
        return rows[-limit:]

    def render_metrics(self) -> str:
        cutoff = time.monotonic() - self.window
        with self._lock:
            while self._scores and self._scores[0][0] < cutoff:
                self._scores.popleft()
            values = [score for _, score in self._scores]
        self.score_avg.set(sum(values) / len(values) if values else float("nan"))
        return self.registry.render()

    def _failed(self, entry: dict, status: int, message: str) -> tuple[int, dict]:
        # One log line per new kind of failure, not one per request of the stream.
        if self._last_failure != (status, entry["revision"]):
            logger.error("scoring failed with HTTP %d service=%s revision=%s request=%s: %s", status,
                         self.spec.name, entry["revision"], entry["request_id"], message)
        self._last_failure = (status, entry["revision"])
        entry.update(score=None, status="error", error=message)
        self._record(entry)
        return status, {"request_id": entry["request_id"], "error": message, "revision": entry["revision"]}

    def _record(self, entry: dict) -> None:
        self.requests.inc(status=entry["status"])
        if entry["status"] == "error":
            self.errors.inc()
        else:
            self.score_hist.observe(entry["score"])
            if entry["status"] == "rejected":
                self.rejections.inc()
        with self._lock:
            if entry["score"] is not None:
                self._scores.append((time.monotonic(), entry["score"]))
            self._recent.append(entry)

    # -- background traffic ----------------------------------------------------------------

    def stream(self, stopped: threading.Event) -> None:
        """Send seeded verification requests to score() until ``stopped`` is set."""
        from ..veid.captures import encode_jpeg, generate_capture, traffic_kind

        rate = stream_rate(float(self.spec.options.get("rate", DEFAULT_STREAM_RATE)), self.time_scale)
        rng = random.Random(f"veid-stream:{self.spec.options.get('seed', 0)}")
        pool: list[bytes] = []
        logger.info("verification stream at %.2f requests/s service=%s", rate, self.spec.name)
        while not stopped.wait(rng.expovariate(rate)):
            if len(pool) < CAPTURE_POOL:
                pool.append(encode_jpeg(generate_capture(rng, traffic_kind(rng))))
                data = pool[-1]
            else:
                data = rng.choice(pool)
            try:
                self.score(data, "stream")
            except Exception:  # the stream must outlive one bad request; the error is logged
                logger.exception("stream request failed service=%s", self.spec.name)


def main(argv: list[str] | None = None) -> int:
    """Run the VEID service ``--name`` of the network file ``--network`` until SIGTERM or SIGINT; return the exit code."""
    parser = service_parser("incidentlab.localnet.veid_service", __doc__, "virtengine-veid")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    service = _load_service(parser, args)
    stopped = threading.Event()
    stop_on_signals(stopped, "service", service.spec.name)
    try:
        servers = _serve(service)
    except OSError as exc:
        logger.error("cannot listen on 127.0.0.1 for %s (ports %s): %s; another process may hold a port",
                     service.spec.name, service.spec.ports, exc)
        return 1
    watch_network_file(args.network, stopped, service.spec.name)
    threading.Thread(target=_load_then_stream, args=(service, stopped), name="veid-load", daemon=True).start()
    logger.info("starting service=%s time_scale=%g", service.spec.name, service.time_scale)
    while not stopped.wait(0.2):
        pass
    for server in servers:
        server.shutdown()
        server.server_close()
    logger.info("stopped service=%s", service.spec.name)
    return 0


def _load_then_stream(service: VeidService, stopped: threading.Event) -> None:
    try:
        service.load()
    except Exception:
        logger.exception("loading the scorer failed service=%s", service.spec.name)
        return
    service.stream(stopped)


def _load_service(parser: argparse.ArgumentParser, args: argparse.Namespace) -> VeidService:
    network = load_network(args.network)
    try:
        spec = network.service(args.name)
    except KeyError:
        names = ", ".join(s.name for s in network.services) or "none"
        parser.error(f"no service named {args.name!r} in {args.network}; known services: {names}")
    if spec.kind != "veid":
        parser.error(f"service {args.name!r} in {args.network} has kind {spec.kind!r}, not 'veid'")
    return VeidService(network, spec)


class _Server(ServiceHTTPServer):
    service: VeidService


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 60.0
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: dict | str, content_type: str = "application/json") -> None:
        data = (json.dumps(body) if isinstance(body, (dict, list)) else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError(f"request body of {length} bytes is over the limit of {MAX_BODY}")
        return self.rfile.read(length)


class _ApiHandler(_Handler):
    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        service = self.server.service
        if url.path == f"{API_PREFIX}/revisions":
            self._send(200, service.revisions())
        elif url.path == f"{API_PREFIX}/verifications":
            self._send(200, {"verifications": service.recent(query.get("since"))})
        elif url.path == f"{API_PREFIX}/model":
            self._send(200, service.model_check())
        else:
            self._send(404, {"error": f"no route GET {url.path}"})

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        service = self.server.service
        try:
            body = self._body()
            if url.path == f"{API_PREFIX}/score":
                query = dict(urllib.parse.parse_qsl(url.query))
                self._send(*service.score(body, "api", query.get("request_id")))
                return
            request = json.loads(body or b"{}")
            if not isinstance(request, dict):
                raise ValueError(f"the request body must be a JSON object, not {type(request).__name__}")
            if url.path == f"{API_PREFIX}/revisions":
                revision = service.deploy(request.get("change"), request.get("author") or "unknown",
                                          request.get("message", ""))
                self._send(201, revision)
            elif url.path == f"{API_PREFIX}/rollback":
                self._send(201, service.rollback(request.get("to"), request.get("author") or "unknown"))
            else:
                self._send(404, {"error": f"no route POST {url.path}"})
        except KeyError as exc:
            logger.info("rejected POST %s with HTTP 404 service=%s: %s", url.path, service.spec.name, exc.args[0])
            self._send(404, {"error": exc.args[0]})
        except ValueError as exc:
            logger.info("rejected POST %s with HTTP 400 service=%s: %s", url.path, service.spec.name, exc)
            self._send(400, {"error": str(exc)})


class _MetricsHandler(_Handler):
    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/metrics":
            self._send(404, "404 page not found\n", "text/plain; charset=utf-8")
            return
        self._send(200, self.server.service.render_metrics(), Registry.CONTENT_TYPE)


def _serve(service: VeidService) -> list[_Server]:
    # Both ports are bound before either serves, so a response on /metrics means the API is bound too.
    servers = []
    for kind, handler in (("rest", _ApiHandler), ("metrics", _MetricsHandler)):
        server = _Server(("127.0.0.1", service.spec.ports[kind]), handler)
        server.service = service
        servers.append(server)
    for kind, server in zip(("rest", "metrics"), servers):
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"{kind}-server",
                         daemon=True).start()
        logger.info("%s server listening on 127.0.0.1:%d service=%s", kind, service.spec.ports[kind], service.spec.name)
    return servers


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


if __name__ == "__main__":
    sys.exit(main())

"""A steady, seeded client load on the localnet's API gateway: N requests per second over its REST paths and /rpc/status.

It talks only to the gateway's REST port on 127.0.0.1 and logs the count of each status code every
few seconds. Standard library only.
Usage: ``python -m incidentlab.localnet.client --network FILE --name virtengine-client [--rate N] [--seed S]``
"""

from __future__ import annotations

import argparse
import collections
import http.client
import logging
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .gateway import ROUTE_LATEST_BLOCK, ROUTE_NODE_INFO, ROUTE_SYNCING, upstream_timeout, watch_network_file
from .servicemain import configure_logging, service_parser, stop_on_signals
from .network import (
    DEFAULT_CLIENT_CONCURRENCY, DEFAULT_CLIENT_RATE, DEFAULT_UPSTREAM_TIMEOUT, ServiceSpec, load_network,
)

__all__ = ["ClientLoad", "client_timeout", "main", "REQUEST_MIX"]

# Run with -m, __name__ is "__main__": name the logger after the module instead.
logger = logging.getLogger("incidentlab.localnet.client")

#: Paths of the gateway that the client requests, and the weight of each in the mix.
REQUEST_MIX = (
    (ROUTE_SYNCING, 3),
    (ROUTE_LATEST_BLOCK, 3),
    (ROUTE_NODE_INFO, 1),
    ("/rpc/status", 3),
)
MAX_RATE = 200.0
MAX_CONCURRENCY = 64
#: Seconds between two summary lines before time scaling, and the minimum after it.
SUMMARY_INTERVAL = 5.0
MIN_SUMMARY_INTERVAL = 1.0
#: The client waits longer than the gateway's upstream timeout (by half of it, at least 0.3 s),
#: so that the gateway's own 504 arrives before the client gives up.
TIMEOUT_MARGIN_FACTOR = 0.5
MIN_TIMEOUT_MARGIN = 0.3
#: A reused keep-alive connection that the gateway has closed fails with one of these; the
#: request is then sent once more on a new connection.
STALE_CONNECTION_ERRORS = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class ClientLoad:
    """Requests to one gateway at a fixed rate, in a seeded order, with at most ``concurrency`` in flight.

    Takes the gateway's REST port on 127.0.0.1, the rate in requests per second, the seed of the
    mix, the maximum requests in flight, the request timeout and the summary interval, both in
    seconds. When every slot is busy (a frozen gateway), the request of that tick is counted as
    dropped rather than queued, so threads and requests never pile up.
    """

    def __init__(self, port: int, *, rate: float = DEFAULT_CLIENT_RATE, seed: int = 0, concurrency: int = DEFAULT_CLIENT_CONCURRENCY,
                 timeout: float, summary_interval: float, name: str = "client"):
        self.port = port
        self.rate = rate
        self.timeout = timeout
        self.summary_interval = summary_interval
        self.name = name
        self._rng = random.Random(seed)
        self._paths = [path for path, _ in REQUEST_MIX]
        self._weights = [weight for _, weight in REQUEST_MIX]
        self._slots = threading.BoundedSemaphore(concurrency)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="request")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._counts: collections.Counter = collections.Counter()

    def next_path(self) -> str:
        """Return the next path of the seeded mix."""
        return self._rng.choices(self._paths, self._weights)[0]

    def run(self, stopped: threading.Event) -> None:
        """Send requests until ``stopped`` is set, logging a summary every ``summary_interval`` seconds."""
        interval = 1.0 / self.rate
        next_send = time.monotonic()
        next_summary = next_send + self.summary_interval
        window_start = next_send
        while not stopped.is_set():
            self._send(self.next_path())
            now = time.monotonic()
            next_send += interval
            # After a pause of the client itself, start again from now instead of sending a burst.
            next_send = max(next_send, now - interval)
            if now >= next_summary:
                self._log_summary(now - window_start)
                window_start, next_summary = now, now + self.summary_interval
            stopped.wait(max(0.0, next_send - time.monotonic()))
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._log_summary(time.monotonic() - window_start)

    def _send(self, path: str) -> None:
        if not self._slots.acquire(blocking=False):
            self._count("dropped")
            return
        self._count("sent")
        self._pool.submit(self._request, path)

    def _request(self, path: str) -> None:
        try:
            outcome = str(self._get(path))
        except TimeoutError:
            outcome = "timeout"
        except ConnectionRefusedError:
            outcome = "refused"
        except (OSError, http.client.HTTPException) as exc:
            logger.debug("GET %s failed: %s: %s", path, type(exc).__name__, exc)
            outcome = "error"
        finally:
            self._slots.release()
        self._count(outcome)

    def _get(self, path: str) -> int:
        connection = getattr(self._local, "connection", None)
        reused = connection is not None
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
        except STALE_CONNECTION_ERRORS:
            connection.close()
            self._local.connection = None
            if not reused:
                raise
            return self._get(path)
        except BaseException:
            connection.close()
            self._local.connection = None
            raise
        self._local.connection = connection
        return response.status

    def _count(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1

    def _log_summary(self, seconds: float) -> None:
        # Outcomes are counted when a request ends, so a window's outcomes may belong to requests
        # sent in the window before.
        with self._lock:
            counts, self._counts = self._counts, collections.Counter()
        sent = counts.pop("sent", 0)
        detail = " ".join(f"{outcome}={counts[outcome]}" for outcome in sorted(counts)) or "none"
        logger.info("summary client=%s gateway=127.0.0.1:%d window=%.1fs sent=%d outcomes: %s",
                    self.name, self.port, seconds, sent, detail)


def client_timeout(gateway_timeout: float) -> float:
    """Return the client's request timeout in seconds for a gateway whose upstream timeout is ``gateway_timeout``."""
    return gateway_timeout + max(MIN_TIMEOUT_MARGIN, TIMEOUT_MARGIN_FACTOR * gateway_timeout)


def main(argv: list[str] | None = None) -> int:
    """Run the client named ``--name`` of the network file ``--network`` until SIGTERM or SIGINT; return the exit code."""
    parser = service_parser("incidentlab.localnet.client", __doc__, "virtengine-client")
    parser.add_argument("--rate", type=float, default=None, help="requests per second (default: the network file's, else 5)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the request mix (default: the network file's, else 0)")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    load = _load_client(parser, args)

    stopped = threading.Event()
    # The supervisor takes a SIGTERM handler as the sign that the client is ready, so it is
    # installed once the network file has been read and just before the loop starts.
    stop_on_signals(stopped, "client", load.name)
    watch_network_file(args.network, stopped, load.name)
    logger.info("starting client=%s gateway=127.0.0.1:%d rate=%.1f/s timeout=%.2fs", load.name, load.port,
                load.rate, load.timeout)
    load.run(stopped)
    logger.info("stopped client=%s", load.name)
    return 0


def _load_client(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ClientLoad:
    network = load_network(args.network)
    spec = _service(parser, network, args.name, "client", args.network)
    gateway = _service(parser, network, spec.options.get("gateway", ""), "gateway", args.network)
    rate = args.rate if args.rate is not None else float(spec.options.get("rate", DEFAULT_CLIENT_RATE))
    if not 0 < rate <= MAX_RATE:
        parser.error(f"rate={rate!r} is out of range; give requests per second above 0 and up to {MAX_RATE:g}")
    concurrency = int(spec.options.get("concurrency", DEFAULT_CLIENT_CONCURRENCY))
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        parser.error(f"concurrency={concurrency!r} in {args.network} is out of range; use 1 to {MAX_CONCURRENCY}")
    gateway_timeout = upstream_timeout(gateway.options.get("upstream_timeout", DEFAULT_UPSTREAM_TIMEOUT), network.time_scale)
    return ClientLoad(
        gateway.ports["rest"], rate=rate, seed=args.seed if args.seed is not None else int(spec.options.get("seed", 0)),
        concurrency=concurrency, timeout=client_timeout(gateway_timeout),
        summary_interval=max(MIN_SUMMARY_INTERVAL, SUMMARY_INTERVAL * network.time_scale), name=spec.name,
    )


def _service(parser: argparse.ArgumentParser, network, name: str, kind: str, path: str) -> ServiceSpec:
    try:
        spec = network.service(name)
    except KeyError:
        names = ", ".join(s.name for s in network.services) or "none"
        parser.error(f"no service named {name!r} in {path}; known services: {names}")
    if spec.kind != kind:
        parser.error(f"service {name!r} in {path} has kind {spec.kind!r}, not {kind!r}")
    return spec


if __name__ == "__main__":
    sys.exit(main())

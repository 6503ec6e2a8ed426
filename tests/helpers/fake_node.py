"""Stand-in validator process for supervisor tests: serves /health on 127.0.0.1 and listens on its other ports.

It has the validator's command-line interface (``--network FILE --name NAME``), reads the
same network.json, logs to stderr and exits 0 on SIGTERM. It runs no consensus. Standard library only.

Test-only options: ``--exit-at-start CODE`` exits right after logging one line, and
``--ignore-sigterm`` logs SIGTERM and keeps serving, so that a stop must escalate to SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

logger = logging.getLogger("fake_node")

HEALTH_BODY = b'{"jsonrpc":"2.0","id":-1,"result":{}}'


class _Handler(BaseHTTPRequestHandler):
    metrics_body = b""

    def do_GET(self) -> None:  # noqa: N802 (name fixed by http.server)
        if self.path == "/health":
            self._send(200, "application/json", HEALTH_BODY)
        elif self.path == "/metrics":
            self._send(200, "text/plain; version=0.0.4", self.metrics_body)
        else:
            self._send(404, "application/json", b'{"error":"not found"}')

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (signature fixed by http.server)
        logger.info("served %s", format % args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--network", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--exit-at-start", type=int, default=None)
    parser.add_argument("--ignore-sigterm", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    network = json.loads(Path(args.network).read_text(encoding="utf-8"))
    spec = next(v for v in network["validators"] if v["name"] == args.name)
    Path(spec["home"]).mkdir(parents=True, exist_ok=True)
    logger.info("starting %s pid=%d rpc=%d chain_id=%s", args.name, os.getpid(), spec["ports"]["rpc"], network["chain_id"])
    if args.exit_at_start is not None:
        logger.error("exiting at start with code %d as asked", args.exit_at_start)
        return args.exit_at_start

    _Handler.metrics_body = f'fake_node_up{{chain_id="{network["chain_id"]}"}} 1\n'.encode()
    rpc = ThreadingHTTPServer(("127.0.0.1", spec["ports"]["rpc"]), _Handler)
    metrics = ThreadingHTTPServer(("127.0.0.1", spec["ports"]["metrics"]), _Handler)
    p2p = ThreadingHTTPServer(("127.0.0.1", spec["ports"]["p2p"]), _Handler)
    for server in (metrics, p2p):
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def on_sigterm(signum, frame) -> None:
        logger.info("received SIGTERM")
        if not args.ignore_sigterm:
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        rpc.serve_forever(poll_interval=0.05)
    finally:
        logger.info("shutting down %s", args.name)
        for server in (rpc, metrics, p2p):
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Entry point of one validator process: ``python -m incidentlab.localnet.validator``.

It reads the localnet's network file, serves RPC, p2p and metrics on 127.0.0.1, block-syncs
from its peers and then takes part in consensus until SIGTERM or SIGINT. Standard library only.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .network import load_network
from .node import ValidatorNode
from .servers import serve_all

logger = logging.getLogger("incidentlab.localnet.validator")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m incidentlab.localnet.validator", description=__doc__)
    parser.add_argument("--network", required=True, help="path of the localnet's network.json")
    parser.add_argument("--name", required=True, help="validator name in the network file, like virtengine-node-0")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    args = parser.parse_args(argv)

    # CometBFT-like log lines: level letter, time, message with key=value pairs.
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(levelname).1s[%(asctime)s.%(msecs)03d] %(message)s module=%(name)s",
        datefmt="%Y-%m-%d|%H:%M:%S",
    )
    network = load_network(args.network)
    try:
        spec = network.validator(args.name)
    except KeyError:
        names = ", ".join(v.name for v in network.validators)
        parser.error(f"no validator named {args.name!r} in {args.network}; known: {names}")

    node = ValidatorNode(network, spec)
    try:
        servers = serve_all(node)
    except OSError as exc:
        logger.error("cannot listen on 127.0.0.1 for %s: %s; another process may hold the port", spec.name, exc)
        return 1

    stopped = threading.Event()

    def on_signal(signum: int, frame) -> None:
        logger.info("received %s, shutting down node=%s", signal.Signals(signum).name, spec.name)
        stopped.set()
        node.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("starting validator node=%s chain_id=%s address=%s", spec.name, network.chain_id, spec.address)

    worker = threading.Thread(target=node.run, name="consensus", daemon=True)
    worker.start()
    while worker.is_alive() and not stopped.is_set():
        worker.join(0.2)
    for server in servers:
        server.shutdown()
        server.server_close()
    worker.join(2.0)
    node.store.close()
    logger.info("stopped node=%s", spec.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

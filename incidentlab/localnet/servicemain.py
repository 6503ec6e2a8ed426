"""The parts every localnet service's ``main()`` shares: its command line, its log format and its stop signals.

Standard library only, because the services run unchanged inside any image that has python3.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

__all__ = ["service_parser", "configure_logging", "stop_on_signals"]

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(levelname).1s[%(asctime)s.%(msecs)03d] %(message)s module=%(name)s"
LOG_DATE_FORMAT = "%Y-%m-%d|%H:%M:%S"


def service_parser(module: str, description: str | None, example: str) -> argparse.ArgumentParser:
    """Return the parser of ``python -m MODULE``: --network, --name (like ``example``) and --log-level.

    A service adds its own options to it before parsing.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    parser.add_argument("--network", required=True, help="path of the localnet's network.json")
    parser.add_argument("--name", required=True, help=f"service name in the network file, like {example}")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    return parser


def configure_logging(level: str) -> None:
    """Log to stderr in the localnet's format (CometBFT-like: level letter, time, message, module)."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=LOG_FORMAT, datefmt=LOG_DATE_FORMAT)


def stop_on_signals(stopped: threading.Event, kind: str, name: str) -> None:
    """Set ``stopped`` on SIGTERM or SIGINT, logging the signal with the service's ``kind`` and ``name``."""

    def on_signal(signum: int, frame) -> None:
        logger.info("received %s, shutting down %s=%s", signal.Signals(signum).name, kind, name)
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

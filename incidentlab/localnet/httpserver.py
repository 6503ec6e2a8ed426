"""The threading HTTP server of the localnet services (standard library only)."""

from __future__ import annotations

import logging
import sys
from http.server import ThreadingHTTPServer

__all__ = ["ServiceHTTPServer"]

logger = logging.getLogger(__name__)


class ServiceHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with daemon threads and quiet client disconnects."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's listen backlog is 5. When more clients connect at once, Linux drops their
    # SYNs and resends them 1 s and 3 s after the first, which is longer than the gateway's
    # upstream timeout, so a burst of clients turned into 504s. The kernel caps this value at
    # net.core.somaxconn.
    request_queue_size = 256

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (a probe timing out on a frozen node, a client whose timeout is
        # shorter than a slow upstream) closes its socket before the response is written. That
        # is expected, so it gets one log line rather than a traceback.
        error = sys.exc_info()[1]
        if isinstance(error, (BrokenPipeError, ConnectionResetError)):
            logger.debug("client %s disconnected before the response: %s", client_address, error)
            return
        super().handle_error(request, client_address)

"""Fault-injecting TCP proxy: a local listener in front of one upstream port (standard library only).

It adds latency, freezes connections or resets them, like Toxiproxy, on hosts without netem.
Usage: ``python -m incidentlab.chaos.proxy --listen HOST:PORT --upstream HOST:PORT --kind KIND ...``
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import logging
import math
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from .._fileio import write_json_atomic
from ..errors import ConfigError, FaultError

__all__ = ["KINDS", "MAX_DELAY_MS", "ProxyFault", "FaultProxy", "main"]

logger = logging.getLogger(__name__)

#: Fault kinds: latency delays every chunk, timeout freezes connections, reset sends a TCP RST.
KINDS = ("latency", "timeout", "reset")
#: Maximum delay of one chunk, in milliseconds.
MAX_DELAY_MS = 60_000
#: Bytes read from a socket at a time. Each read is one chunk, delayed as a unit by the latency fault.
CHUNK_SIZE = 65_536
#: Chunks queued per direction before the proxy stops reading (backpressure under latency).
QUEUE_CHUNKS = 64
#: Seconds allowed for connecting to the upstream.
CONNECT_TIMEOUT = 5.0
#: Seconds that start() and stop() wait for the event loop thread.
LOOP_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class ProxyFault:
    """A fault of the proxy: kind, delay and jitter in ms, the fraction of connections hit, the RNG seed.

    Raises ConfigError (a ValueError) naming the invalid value and its valid range.
    """

    kind: str
    delay_ms: float = 0
    jitter_ms: float = 0
    probability: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"invalid fault kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        _check_range("delay_ms", self.delay_ms, 0, MAX_DELAY_MS, "ms")
        _check_range("jitter_ms", self.jitter_ms, 0, self.delay_ms, "ms (at most delay_ms)")
        _check_range("probability", self.probability, 0, 1, "")
        if self.kind != "latency" and (self.delay_ms or self.jitter_ms):
            raise ConfigError(f"delay_ms={self.delay_ms!r} and jitter_ms={self.jitter_ms!r} apply only to "
                              f"kind 'latency', not {self.kind!r}. Leave them at 0")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"invalid seed {self.seed!r}: expected an integer or None")

    def to_dict(self) -> dict:
        """Return the fault as a plain dict, as written to the state file."""
        return dataclasses.asdict(self)


class FaultProxy:
    """A TCP proxy from ``listen`` to ``upstream`` that injects a ProxyFault, served by an asyncio loop in a thread.

    Takes the listen and upstream (host, port) pairs, an optional fault, and ``allow_non_loopback``,
    which must be True to listen on or connect to an address other than loopback.
    Raises ConfigError for an invalid address. Works as a context manager that starts and stops it.
    """

    def __init__(self, listen: tuple[str, int] = ("127.0.0.1", 0), upstream: tuple[str, int] | None = None, *,
                 fault: ProxyFault | None = None, allow_non_loopback: bool = False):
        self.listen = _check_address("listen", listen, allow_non_loopback)
        self.upstream = _check_address("upstream", upstream, allow_non_loopback)
        _check_fault(fault)
        self._state = (fault, 0)  # (fault, generation): replaced as one tuple so threads read it whole
        self._port: int | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()  # binds to the proxy's loop at its first wait
        self._connections: dict[int, _Connection] = {}
        self._next_index = 0
        self._stopped = False
        self._upstream_down = False
        self._entropy = random.Random()
        self._counts = dict.fromkeys(_COUNTERS, 0)

    def __repr__(self) -> str:
        return f"FaultProxy(listen={_format(self.listen)}, upstream={_format(self.upstream)}, fault={self.fault})"

    def __enter__(self) -> FaultProxy:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def port(self) -> int | None:
        """The bound listen port, or None before start()."""
        return self._port

    @property
    def fault(self) -> ProxyFault | None:
        """The current fault, or None when the proxy passes traffic through unchanged."""
        return self._state[0]

    def start(self) -> int:
        """Bind the listener, serve on a daemon thread and return the bound port.

        Raises FaultError when the proxy was already started or the address cannot be bound.
        """
        with self._lock:
            if self._thread is not None:
                raise FaultError(f"{self!r} was already started. Create a new FaultProxy to start again")
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                            name=f"fault-proxy-{_format(self.listen)}")
            self._thread.start()
        try:
            self._run_in_loop(self._open())
        except OSError as exc:
            self._stopped = True
            self._close_loop()
            raise FaultError(f"fault proxy cannot listen on {_format(self.listen)}: {exc}. "
                             "Choose a free port, or port 0 for any free port") from exc
        logger.info("fault proxy listening on %s, upstream %s, fault %s",
                    _format((self.listen[0], self._port)), _format(self.upstream), self.fault)
        return self._port

    def stop(self) -> None:
        """Close the listener and every open connection. Safe to call again, or before start()."""
        with self._lock:
            if self._thread is None or self._stopped:
                self._stopped = True
                return
            self._stopped = True
        try:
            self._run_in_loop(self._shutdown())
        finally:
            self._close_loop()
        logger.info("fault proxy on port %s to %s stopped: %s", self._port, _format(self.upstream), self.stats())

    def set_fault(self, fault: ProxyFault | None) -> None:
        """Replace the fault, for new connections and for data not yet forwarded on open ones.

        The selection by probability is made again for every open connection. A timeout fault
        freezes open connections too, but a reset fault only applies to new ones. Clearing a
        latency fault sends queued chunks at once, and clearing a timeout fault releases the
        frozen connections, which then connect to the upstream if they had not yet.
        """
        _check_fault(fault)
        with self._lock:
            self._state = (fault, self._state[1] + 1)
            if self._loop is not None and not self._stopped:
                self._loop.call_soon_threadsafe(self._wake)
        logger.info("fault proxy on port %s to %s: fault set to %s", self._port, _format(self.upstream), fault)

    def clear(self) -> None:
        """Remove the fault, so traffic passes through unchanged."""
        self.set_fault(None)

    def stats(self) -> dict[str, int]:
        """Return the counters: connections, bytes each way, upstream errors and faults applied."""
        counts = dict(self._counts)
        counts["connections_open"] = len(self._connections)
        counts["faults_applied"] = counts["chunks_delayed"] + counts["connections_held"] + counts["connections_reset"]
        return counts

    # The methods below run in the event loop thread.

    async def _open(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.listen[0], self.listen[1])
        self._port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        self._server.close()
        await asyncio.sleep(0)  # lets handlers of just-accepted connections register themselves
        tasks = [conn.task for conn in self._connections.values()]
        for conn in list(self._connections.values()):
            conn.close(abort=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _wake(self) -> None:
        # Each fault change sets the event that waiting senders hold and leaves a fresh one.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self._next_index, asyncio.current_task(), client_writer)
        self._next_index += 1
        self._connections[conn.index] = conn
        self._counts["connections_total"] += 1
        logger.debug("fault proxy on port %s: connection %d from %s", self._port, conn.index,
                     client_writer.get_extra_info("peername"))
        try:
            if self._applies(conn, "reset"):
                self._counts["connections_reset"] += 1
                conn.reset()
                return
            await self._wait_while_held(conn)
            if not await self._connect_upstream(conn):
                return
            await self._forward(conn, client_reader)
        except asyncio.CancelledError:
            # stop() cancels this task. Python 3.11's start_server logs a cancelled handler task
            # as an error, so the cancellation ends here.
            logger.debug("fault proxy on port %s: connection %d closed by stop()", self._port, conn.index)
        finally:
            self._connections.pop(conn.index, None)
            conn.close()

    async def _connect_upstream(self, conn: _Connection) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            self._counts["upstream_errors"] += 1
            # Rate limit: one WARNING per outage, DEBUG for the repeats.
            level = logging.DEBUG if self._upstream_down else logging.WARNING
            self._upstream_down = True
            logger.log(level, "fault proxy on port %s: upstream %s failed for connection %d (%r, %d errors so "
                       "far), so the client connection is closed", self._port, _format(self.upstream), conn.index,
                       exc, self._counts["upstream_errors"])
            return False
        self._upstream_down = False
        conn.upstream_reader, conn.upstream_writer = reader, writer
        return True

    async def _forward(self, conn: _Connection, client_reader: asyncio.StreamReader) -> None:
        # One reader and one sender per direction, joined by a queue that keeps the chunks in order.
        to_upstream: asyncio.Queue = asyncio.Queue(QUEUE_CHUNKS)
        to_client: asyncio.Queue = asyncio.Queue(QUEUE_CHUNKS)
        pumps = [
            asyncio.create_task(self._read_chunks(conn, client_reader, to_upstream, "upstream")),
            asyncio.create_task(self._send_chunks(conn, to_upstream, conn.upstream_writer, "upstream")),
            asyncio.create_task(self._read_chunks(conn, conn.upstream_reader, to_client, "client")),
            asyncio.create_task(self._send_chunks(conn, to_client, conn.client_writer, "client")),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in pumps:
                task.cancel()
            results = await asyncio.gather(*pumps, return_exceptions=True)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            logger.debug("fault proxy on port %s: connection %d ended by %r", self._port, conn.index, errors[0])

    async def _read_chunks(self, conn: _Connection, reader, queue: asyncio.Queue, direction: str) -> None:
        while True:
            data = await reader.read(CHUNK_SIZE)
            state = fault, generation = self._state
            due = asyncio.get_running_loop().time()
            if self._applies(conn, "latency", state):
                if data:
                    self._counts["chunks_delayed"] += 1
                due += conn.draw_delay_ms(fault, generation, direction) / 1000
            # An empty chunk is the end of the stream, delayed like data and forwarded as a FIN.
            await queue.put((due, generation, data))
            if not data:
                return

    async def _send_chunks(self, conn: _Connection, queue: asyncio.Queue, writer, direction: str) -> None:
        while True:
            due, generation, data = await queue.get()
            await self._wait_for_turn(conn, due, generation)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            # Counted before the write, so that stats() already includes any data that a peer has received.
            self._counts[f"bytes_to_{direction}"] += len(data)
            writer.write(data)
            await writer.drain()

    async def _wait_for_turn(self, conn: _Connection, due: float, generation: int) -> None:
        # A held connection forwards nothing. A changed fault that no longer delays this
        # connection sends the queued chunk at once instead of waiting out the old delay.
        while True:
            changed = self._changed
            if await self._wait_while_held(conn):
                continue
            remaining = due - asyncio.get_running_loop().time()
            if remaining <= 0 or (self._state[1] != generation and not self._applies(conn, "latency")):
                return
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return

    async def _wait_while_held(self, conn: _Connection) -> bool:
        """Wait while a timeout fault freezes ``conn``, and return True if it waited."""
        waited = False
        while self._applies(conn, "timeout"):
            generation = self._state[1]
            if conn.held_generation != generation:
                conn.held_generation = generation
                self._counts["connections_held"] += 1
                logger.debug("fault proxy on port %s: connection %d held", self._port, conn.index)
            waited = True
            await self._changed.wait()
        return waited

    def _applies(self, conn: _Connection, kind: str, state: tuple | None = None) -> bool:
        fault, generation = state or self._state
        return fault is not None and fault.kind == kind and conn.selected(fault, generation, self._entropy)

    def _run_in_loop(self, coroutine) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(LOOP_TIMEOUT)

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(LOOP_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()


#: Counters of FaultProxy.stats(). bytes_to_upstream counts client data, bytes_to_client upstream data.
_COUNTERS = ("connections_total", "bytes_to_upstream", "bytes_to_client", "upstream_errors",
             "chunks_delayed", "connections_held", "connections_reset")


class _Connection:
    """One client connection: its writers, whether the fault selected it, and its jitter RNGs."""

    def __init__(self, index: int, task: asyncio.Task, client_writer: asyncio.StreamWriter):
        self.index = index
        self.task = task
        self.client_writer = client_writer
        self.upstream_reader: asyncio.StreamReader | None = None
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.held_generation = -1
        self._selection: tuple[int, bool] = (-1, False)
        self._rngs: dict[str, tuple[int, random.Random]] = {}

    def selected(self, fault: ProxyFault, generation: int, entropy: random.Random) -> bool:
        """Return whether ``fault`` applies to this connection, drawn once per fault generation."""
        if self._selection[0] != generation:
            if fault.seed is None:
                draw = entropy.random()
            else:
                # random.Random turns a str seed into an int through SHA-512, not hash(), so the draw
                # is the same in every process.
                draw = random.Random(f"{fault.seed}:select:{self.index}").random()
            self._selection = (generation, draw < fault.probability)
        return self._selection[1]

    def draw_delay_ms(self, fault: ProxyFault, generation: int, direction: str) -> float:
        """Return the delay of the next chunk in ``direction``: delay_ms plus uniform jitter."""
        if self._rngs.get(direction, (-1,))[0] != generation:
            seed = None if fault.seed is None else f"{fault.seed}:jitter:{self.index}:{direction}"
            self._rngs[direction] = (generation, random.Random(seed))
        return fault.delay_ms + self._rngs[direction][1].uniform(-fault.jitter_ms, fault.jitter_ms)

    def reset(self) -> None:
        """Close the client connection with a TCP RST: SO_LINGER on with a linger time of 0."""
        sock = self.client_writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.client_writer.transport.abort()

    def close(self, abort: bool = False) -> None:
        """Close both sockets, or with ``abort`` drop what is still buffered and close at once."""
        for writer in (self.client_writer, self.upstream_writer):
            if writer is None:
                continue
            if abort:
                writer.transport.abort()
            else:
                writer.close()


def main(argv: list[str] | None = None) -> int:
    """Run one proxy as its own process until --expires-at, SIGTERM or SIGINT, and return the exit status."""
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.expires_at is not None and args.expires_at <= time.time():
        logger.error("--expires-at %s is in the past. Pass a future UNIX time", args.expires_at)
        return 2
    try:
        fault = ProxyFault(args.kind, args.delay_ms, args.jitter_ms, args.probability, args.seed)
        proxy = FaultProxy(args.listen, args.upstream, fault=fault, allow_non_loopback=args.allow_non_loopback)
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, frame: stop.set())
    try:
        proxy.start()
    except FaultError as exc:
        logger.error("%s", exc)
        return 1

    try:
        if args.state:
            _write_state(args.state, proxy, args.expires_at)
        _wait_until(stop, args.expires_at)
    finally:
        proxy.stop()
        if args.state:
            args.state.unlink(missing_ok=True)
    return 0


def _write_state(path: Path, proxy: FaultProxy, expires_at: float | None) -> None:
    write_json_atomic(path, {
        "pid": os.getpid(), "listen": _format((proxy.listen[0], proxy.port)), "port": proxy.port,
        "upstream": _format(proxy.upstream), "fault": proxy.fault.to_dict(),
        "started_at": time.time(), "expires_at": expires_at})


def _wait_until(stop: threading.Event, expires_at: float | None) -> None:
    # Short waits, so the signal handler runs promptly and the expiry follows the wall clock.
    while not stop.is_set():
        remaining = math.inf if expires_at is None else expires_at - time.time()
        if remaining <= 0:
            logger.info("fault proxy expired at %s", expires_at)
            return
        stop.wait(min(remaining, 0.5))
    logger.info("fault proxy received a stop signal")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m incidentlab.chaos.proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, type=_parse_address, help="HOST:PORT to listen on (port 0: any free port)")
    parser.add_argument("--upstream", required=True, type=_parse_address, help="HOST:PORT to forward to")
    parser.add_argument("--kind", required=True, choices=KINDS, help="fault kind")
    parser.add_argument("--delay-ms", type=float, default=0, help="latency of each chunk, in ms (0 to 60000)")
    parser.add_argument("--jitter-ms", type=float, default=0, help="uniform jitter around the delay, in ms")
    parser.add_argument("--probability", type=float, default=1.0, help="fraction of connections hit (0 to 1)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random draws")
    parser.add_argument("--expires-at", type=float, default=None, help="UNIX time at which the proxy stops")
    parser.add_argument("--state", type=Path, default=None, help="JSON file written once listening, removed at exit")
    parser.add_argument("--allow-non-loopback", action="store_true", help="allow addresses other than loopback")
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser.parse_args(argv)


def _parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: expected HOST:PORT, like 127.0.0.1:26657")
    return host.strip("[]"), int(port)


def _check_address(role: str, address, allow_non_loopback: bool) -> tuple[str, int]:
    if isinstance(address, list):
        address = tuple(address)  # as read back from JSON
    if not (isinstance(address, tuple) and len(address) == 2 and isinstance(address[1], int)
            and 0 <= address[1] <= 65535 and isinstance(address[0], str)):
        raise ConfigError(f"invalid {role} address {address!r}: expected a (host, port) tuple, port 0 to 65535")
    host = address[0]
    if allow_non_loopback or host == "localhost":
        return address
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False  # a host name other than localhost: resolving it could query DNS
    if not loopback:
        raise ConfigError(f"{role} address {host!r} is not loopback: use 127.0.0.1, ::1 or localhost, "
                          "or pass allow_non_loopback=True (--allow-non-loopback) to use another address on purpose")
    return address


def _check_fault(fault) -> None:
    if fault is not None and not isinstance(fault, ProxyFault):
        raise ConfigError(f"invalid fault {fault!r}: expected a ProxyFault or None")


def _check_range(name: str, value, low: float, high: float, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"invalid {name} {value!r}: expected a number from {low} to {high} {unit}".rstrip())


def _format(address: tuple[str, int | None]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


if __name__ == "__main__":
    # Run the imported module, so that log records carry its name instead of __main__.
    from incidentlab.chaos.proxy import main as _main

    sys.exit(_main())

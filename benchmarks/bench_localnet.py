"""Benchmark the embedded localnet against a bare standard-library HTTP server on 127.0.0.1.

Starts real validator processes and the gateway (a new lab home per run) and one bare server
process per run, measures cold start, /status latency and /status throughput of a validator
and of the gateway, and prints a Markdown report.

Usage: python benchmarks/bench_localnet.py [--runs 5] [--time-scale 0.2] [--nagle-peer]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as _dt
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

# Measure the incidentlab of this checkout, even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from incidentlab.backends.local import LocalBackend  # noqa: E402
from incidentlab.config import LabConfig  # noqa: E402
from incidentlab.errors import ConfigError  # noqa: E402

#: Seconds before one HTTP request fails the benchmark.
REQUEST_TIMEOUT = 5.0
#: Seconds before a phase (a start-up wait or one request loop) fails the benchmark.
PHASE_TIMEOUT = 120.0
#: Seconds between two polls while waiting for a server or for block 1.
POLL_INTERVAL = 0.01
#: Seconds to wait for the bare server to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 5.0
#: The localnet's API gateway service.
GATEWAY = "virtengine-gateway"

# The peer: a bare ThreadingHTTPServer that sends one fixed body with HTTP/1.1 keep-alive,
# writing the headers and then the body in two calls, as the usual BaseHTTPRequestHandler code
# does. With argv[3] == "nodelay" it sets TCP_NODELAY on each connection. Without it, Nagle's
# algorithm delays the body until the client's delayed ACK of the headers (about 40 ms on
# Linux loopback).
BARE_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
BODY = sys.argv[2].encode()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = sys.argv[3] == "nodelay"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format, *args):
        pass

class Server(ThreadingHTTPServer):
    daemon_threads = True

Server(("127.0.0.1", PORT), Handler).serve_forever()
"""
#: Body of the bare server before a /status body has been captured from a validator.
DEFAULT_BODY = '{"jsonrpc": "2.0", "id": -1, "result": {}}'
#: The peers: result key, whether TCP_NODELAY is set, and the column title. The first is
#: always measured, the second only with --nagle-peer.
PEERS = (("bare", True, "bare server"), ("nagle", False, "bare server, Nagle on"))


class BenchmarkError(Exception):
    """A measurement failed: a server did not respond in time, or returned a status other than 200."""


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run every measurement ``--runs`` times and print the Markdown report."""
    args = _parse_args(argv)
    load_at_start = os.getloadavg()[0]
    runs = []
    body = DEFAULT_BODY
    for index in range(args.runs):
        _progress(f"run {index + 1}/{args.runs}: localnet")
        localnet = bench_localnet(args)
        body = localnet.pop("body")
        run = {"localnet": localnet}
        for key, nodelay, title in _peers(args):
            _progress(f"run {index + 1}/{args.runs}: {title} ({len(body)} byte body)")
            run[key] = bench_bare_server(args, body, nodelay)
        runs.append(run)
    print(render_report(args, runs, len(body), (load_at_start, os.getloadavg()[0])))
    return 0


def bench_localnet(args: argparse.Namespace) -> dict:
    """Measure one localnet in a new lab home: cold start, first block, /status of validator 0 and the gateway, down().

    Returns the figures in seconds (latencies in milliseconds, throughput in requests per
    second) and the /status body of validator 0 under "body". Raises BenchmarkError.
    """
    with tempfile.TemporaryDirectory(prefix="incidentlab-bench-") as home:
        config = LabConfig(home=home, validators=args.validators, time_scale=args.time_scale, classic_ports=False)
        backend = LocalBackend(config)
        figures: dict = {}
        try:
            start = time.perf_counter()
            backend.up()
            figures["health"] = time.perf_counter() - start
            url = backend.localnet.network().validators[0].rpc_url + "/status"
            wait_for_block(url, 1)
            figures["first_block"] = time.perf_counter() - start
            figures.update(measure_http(url, args))
            # The gateway's CometBFT RPC proxy, which forwards /status to validator 0.
            gateway = backend.localnet.network().service(GATEWAY)
            gateway_url = f"http://127.0.0.1:{gateway.ports['rest']}/rpc/status"
            figures.update({f"gateway_{key}": value for key, value in measure_http(gateway_url, args).items()})
            with _session() as session:
                figures["body"] = _get_ok(session, url).decode()
        finally:
            stop_start = time.perf_counter()
            backend.down()
            figures["stop"] = time.perf_counter() - stop_start
    return figures


def bench_bare_server(args: argparse.Namespace, body: str, nodelay: bool) -> dict:
    """Measure one bare server process: start until it responds, GET latency and throughput, stop.

    Takes the fixed ``body`` to send and whether to set TCP_NODELAY. Returns the figures
    with the keys of bench_localnet. Raises BenchmarkError.
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}/status"
    figures: dict = {}
    command = [sys.executable, "-c", BARE_SERVER, str(port), body, "nodelay" if nodelay else "nagle"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        wait_until_ready(url, process)
        figures["health"] = time.perf_counter() - start
        figures.update(measure_http(url, args))
    finally:
        stop_start = time.perf_counter()
        _stop_process(process)
        figures["stop"] = time.perf_counter() - stop_start
    return figures


def wait_until_ready(url: str, process: subprocess.Popen) -> None:
    """Poll ``url`` until it returns 200; raise BenchmarkError when the process exits or time runs out."""
    deadline = time.monotonic() + PHASE_TIMEOUT
    with _session() as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BenchmarkError(
                    f"bare server pid {process.pid} exited with code {process.returncode} before responding on {url}; "
                    "its traceback is above on stderr"
                )
            try:
                if session.get(url, timeout=REQUEST_TIMEOUT).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(POLL_INTERVAL)
    raise BenchmarkError(f"{url} did not respond within {PHASE_TIMEOUT:.0f} s; check the machine's load and run again")


def wait_for_block(status_url: str, height: int) -> None:
    """Poll ``status_url`` until sync_info.latest_block_height >= ``height``; raise BenchmarkError on timeout."""
    deadline = time.monotonic() + PHASE_TIMEOUT
    with _session() as session:
        while time.monotonic() < deadline:
            response = session.get(status_url, timeout=REQUEST_TIMEOUT)
            if response.status_code == 200 and int(response.json()["result"]["sync_info"]["latest_block_height"]) >= height:
                return
            time.sleep(POLL_INTERVAL)
    raise BenchmarkError(
        f"{status_url} did not report height {height} within {PHASE_TIMEOUT:.0f} s, so the localnet commits no blocks; "
        "run the localnet tests under tests/ to find out why"
    )


def measure_http(url: str, args: argparse.Namespace) -> dict:
    """Measure sequential GET latency (ms) and concurrent GET throughput (requests per second) on ``url``."""
    samples = measure_latency(url, args.requests, args.warmup)
    rate, cpu_share = measure_throughput(url, args.throughput_requests, args.threads)
    return {
        "latency_median": statistics.median(samples) * 1000,
        "latency_p95": _percentile(samples, 95) * 1000,
        "throughput": rate,
        "client_cpu": cpu_share,
    }


def measure_latency(url: str, count: int, warmup: int) -> list[float]:
    """Send ``warmup`` then ``count`` sequential GETs on one keep-alive session; return the ``count`` durations in seconds."""
    samples = []
    deadline = time.monotonic() + PHASE_TIMEOUT
    with _session() as session:
        for index in range(warmup + count):
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"latency loop on {url} timed out after {PHASE_TIMEOUT:.0f} s and {index} requests; "
                    "lower --requests or check the machine's load"
                )
            start = time.perf_counter()
            _get_ok(session, url)
            if index >= warmup:
                samples.append(time.perf_counter() - start)
    return samples


def measure_throughput(url: str, total: int, threads: int) -> tuple[float, float]:
    """Send ``total`` GETs from ``threads`` client threads, each on its own keep-alive session.

    Returns requests per second over the wall time, and the client process's CPU time over
    that wall time (1.0 is one core busy), which shows when the client is the bottleneck.
    """
    counts = [total // threads + (1 if i < total % threads else 0) for i in range(threads)]
    barrier = threading.Barrier(threads + 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(_throughput_worker, url, count, barrier) for count in counts]
        barrier.wait(timeout=PHASE_TIMEOUT)
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        for future in futures:
            future.result(timeout=PHASE_TIMEOUT)
        wall = time.perf_counter() - wall_start
        cpu = time.process_time() - cpu_start
    return total / wall, cpu / wall


def render_report(args: argparse.Namespace, runs: list[dict], body_size: int, loads: tuple[float, float]) -> str:
    """Return the Markdown report: machine, code, command, then the table of medians over the runs.

    ``loads`` contains the 1-minute load average at the start and at the end of the benchmark.
    """
    peers = _peers(args)
    lines = [
        f"- date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: nproc {len(os.sched_getaffinity(0))}, {_cpu_model()}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}; "
        f"1-minute load average {loads[0]:.2f} at the start, {loads[1]:.2f} at the end",
        f"- code: {_code_version()}",
        f"- command: `{_command_line()}`",
        f"- localnet: {args.validators} validators, time_scale {args.time_scale}; bare server body "
        f"{body_size} bytes (the /status body of validator 0)",
        f"- latency: {args.requests} sequential GETs after {args.warmup} warm-up; throughput: "
        f"{args.throughput_requests} GETs from {args.threads} threads; each cell is the median "
        f"over {len(runs)} runs (min–max in brackets)",
        "",
        "| measure | localnet | " + " | ".join(title for _, _, title in peers)
        + " | " + " | ".join(f"localnet / {title}" for _, _, title in peers) + " |",
        "| --- " + "| ---: " * (1 + 2 * len(peers)) + "|",
    ]
    lines.extend(_table_row(runs, peers, *row) for row in _report_rows(args))
    return "\n".join(lines)


# -- private helpers ------------------------------------------------------------------


def _report_rows(args: argparse.Namespace) -> list[tuple[str, str, str, str, bool]]:
    # Label, localnet key, peer key, number format, whether a ratio means anything.
    return [
        ("cold start until every /health answers (s)", "health", "health", "{:.3f}", True),
        ("cold start until block 1 on validator 0 (s)", "first_block", "health", "{:.3f}", True),
        ("stop: `down()`, or SIGTERM until exit (s)", "stop", "stop", "{:.3f}", True),
        ("`/status` latency, median (ms)", "latency_median", "latency_median", "{:.2f}", True),
        ("`/status` latency, p95 (ms)", "latency_p95", "latency_p95", "{:.2f}", True),
        (f"`/status` throughput, {args.threads} threads (req/s)", "throughput", "throughput", "{:.0f}", True),
        ("client CPU during throughput (cores)", "client_cpu", "client_cpu", "{:.2f}", False),
        ("gateway `/rpc/status` latency, median (ms)", "gateway_latency_median", "latency_median", "{:.2f}", True),
        ("gateway `/rpc/status` latency, p95 (ms)", "gateway_latency_p95", "latency_p95", "{:.2f}", True),
        (f"gateway `/rpc/status` throughput, {args.threads} threads (req/s)", "gateway_throughput", "throughput",
         "{:.0f}", True),
        ("client CPU during gateway throughput (cores)", "gateway_client_cpu", "client_cpu", "{:.2f}", False),
    ]


def _table_row(runs: list[dict], peers: tuple, label: str, local_key: str, peer_key: str, fmt: str, with_ratio: bool) -> str:
    local = [run["localnet"][local_key] for run in runs]
    cells = [_cell(local, fmt)]
    ratios = []
    for key, _, _ in peers:
        peer = [run[key][peer_key] for run in runs]
        cells.append(_cell(peer, fmt))
        ratio = statistics.median(local) / statistics.median(peer)
        ratios.append(_ratio(ratio) if with_ratio else "–")
    return f"| {label} | " + " | ".join(cells + ratios) + " |"


def _peers(args: argparse.Namespace) -> tuple:
    return PEERS if args.nagle_peer else PEERS[:1]


def _ratio(value: float) -> str:
    return f"{value:.1f}×" if value >= 1 else f"{value:.2f}×"


def _cell(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=_positive_int, default=5, help="number of runs; figures are medians over them (default 5)")
    parser.add_argument("--time-scale", type=float, default=0.2, help="LabConfig.time_scale of the localnet (default 0.2)")
    parser.add_argument("--validators", type=_positive_int, default=4, help="validators in the localnet (default 4)")
    parser.add_argument("--requests", type=_positive_int, default=500, help="sequential GETs timed per run (default 500)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed GETs before the latency loop (default 50)")
    parser.add_argument("--throughput-requests", type=_positive_int, default=2000,
                        help="GETs of the throughput phase per run (default 2000)")
    parser.add_argument("--threads", type=_positive_int, default=4, help="client threads of the throughput phase (default 4)")
    parser.add_argument("--nagle-peer", action="store_true",
                        help="also measure a bare server without TCP_NODELAY (adds about 45 s per run)")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error(f"--warmup {args.warmup} is invalid; give 0 or more requests")
    try:
        # Check --validators and --time-scale against the lab's own limits before any run.
        LabConfig(home=tempfile.gettempdir(), validators=args.validators, time_scale=args.time_scale, classic_ports=False)
    except ConfigError as exc:
        parser.error(str(exc))
    return args


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid; give a whole number of 1 or more")
    return value


def _session() -> requests.Session:
    session = requests.Session()
    # Loopback only: ignore any http_proxy from the environment.
    session.trust_env = False
    return session


def _get_ok(session: requests.Session, url: str) -> bytes:
    response = session.get(url, timeout=REQUEST_TIMEOUT)
    if response.status_code != 200:
        raise BenchmarkError(f"GET {url} returned HTTP {response.status_code}, expected 200: {response.text[:200]}")
    return response.content


def _throughput_worker(url: str, count: int, barrier: threading.Barrier) -> None:
    with _session() as session:
        _get_ok(session, url)  # open the keep-alive connection before the clock starts
        barrier.wait(timeout=PHASE_TIMEOUT)
        for _ in range(count):
            _get_ok(session, url)


def _stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)


def _free_port() -> int:
    # NOTE: another program could take the port between this close and the server's bind.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(samples: list[float], percent: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[percent - 1]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _code_version() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        head = _git(root, "rev-parse", "--short", "HEAD")
        changed = _git(root, "status", "--porcelain", "--", "incidentlab")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    count = len(changed.splitlines())
    return f"commit {head}" + (f" plus {count} uncommitted or untracked paths under incidentlab/" if count else "")


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True).stdout.strip()


def _command_line() -> str:
    return " ".join(["python", os.path.relpath(__file__), *sys.argv[1:]])


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

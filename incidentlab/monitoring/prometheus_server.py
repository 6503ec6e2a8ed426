"""Run a real Prometheus server as a detached local process that scrapes the lab's targets on 127.0.0.1.

Writes HOME/prometheus/prometheus.yml and a state file there, and starts, reloads and stops the `prometheus` binary.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import requests
import yaml

from .._fileio import read_json, write_atomic, write_json_atomic
from .._resources import data_path
from ..config import classic_ports_allowed
from ..errors import ConfigError, LocalnetError
from ..localnet.network import port_is_free
from ..probes.prometheus import PrometheusClient, parse_duration

__all__ = [
    "PrometheusServer",
    "PrometheusServerError",
    "prometheus_binary",
    "scrape_targets",
    "DEFAULT_PORT",
    "JOB_VALIDATORS",
]

logger = logging.getLogger(__name__)

#: Port of the lab's Prometheus when it is free (upstream's default is 9090).
DEFAULT_PORT = 9095
JOB_VALIDATORS = "virtengine-validators"
#: Job name of each service kind of lab.status(); other kinds get "virtengine-<kind>".
JOBS_BY_KIND = {"validator": JOB_VALIDATORS}
INSTALL_HINT = "Install it with `apt-get install -y prometheus`, or put a prometheus binary on PATH."
#: How long the TSDB keeps samples: a lab session, not a history.
RETENTION = "2h"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.1
LOG_LINES_IN_ERRORS = 15
_JOB_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")

# Servers started by this Python process, kept so that they are reaped once they exit.
_SPAWNED: dict[int, subprocess.Popen] = {}


class PrometheusServerError(LocalnetError):
    """The lab's Prometheus server could not be configured, started, reached or stopped."""


def prometheus_binary() -> str | None:
    """Return the path of the `prometheus` binary on PATH, or None when it is not installed."""
    return shutil.which("prometheus")


def scrape_targets(services: list[dict]) -> dict[str, list[str]]:
    """Group the ``metrics`` URLs of ``lab.status()["services"]`` into scrape jobs of host:port targets.

    Validators go to the job ``virtengine-validators``, another kind K to ``virtengine-K``.
    Services without a metrics URL are left out. Raises ConfigError for a metrics URL whose
    path is not /metrics, because all targets of a job share one metrics path.
    """
    jobs: dict[str, list[str]] = {}
    for service in services:
        url = service.get("metrics")
        if not url:
            continue
        parts = urllib.parse.urlsplit(url)
        if parts.path != "/metrics" or not parts.netloc:
            raise ConfigError(
                f"service {service.get('name')!r}: metrics URL {url!r} does not end in /metrics. "
                "Pass services whose metrics URL is like http://127.0.0.1:26660/metrics."
            )
        job = JOBS_BY_KIND.get(service.get("kind"), f"virtengine-{service.get('kind')}")
        jobs.setdefault(job, []).append(parts.netloc)
    return jobs


class PrometheusServer:
    """A real Prometheus process for one lab home, like `prometheus --config.file=prometheus.yml`.

    Takes the lab home and ``targets``, which maps a job name to a list of ``host:port`` on
    loopback (scrape_targets() builds it). ``port`` None picks 9095 when free, else any free
    port. ``rules_dir`` is a folder of ``*.yml`` alert rule files, by default the package's
    data/alerts. ``scrape_interval`` (a duration such as "1s") is also the scrape timeout and
    the rule evaluation interval. Nothing runs until start(). The process is detached and its pid
    kept in HOME/prometheus/state.json, so another process can attach() and stop() it.
    Raises ConfigError for invalid values.
    """

    def __init__(self, home: str | os.PathLike, targets: dict[str, list[str]], *, port: int | None = None,
                 rules_dir: str | os.PathLike | None = None, scrape_interval: Any = "1s"):
        self.home = Path(home).expanduser().resolve()
        self.dir = self.home / "prometheus"
        self.targets = _check_targets(targets)
        self.rules_dir = Path(rules_dir).expanduser().resolve() if rules_dir is not None else data_path("alerts")
        if not self.rules_dir.is_dir():
            raise ConfigError(f"rules_dir={str(rules_dir)!r} is not a folder. Pass a folder of *.yml rule files.")
        parse_duration(scrape_interval, "scrape_interval")
        self.scrape_interval = scrape_interval if isinstance(scrape_interval, str) else \
            f"{round(parse_duration(scrape_interval) * 1000)}ms"
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            raise ConfigError(f"port={port!r} is invalid. Use a TCP port from 1 to 65535, or None to pick one.")
        self.requested_port = port
        self.port: int | None = None
        self.pid: int | None = None

    def __repr__(self) -> str:
        where = self.url if self.port else "not started"
        return f"PrometheusServer({str(self.home)!r}, {where}, pid={self.pid})"

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @classmethod
    def attach(cls, home: str | os.PathLike) -> "PrometheusServer | None":
        """Return the server recorded in HOME/prometheus/state.json when its process still runs, else None."""
        state = read_json(Path(home).expanduser().resolve() / "prometheus" / "state.json")
        if not state or not _is_our_process(state.get("pid"), state.get("command")):
            return None
        server = cls(home, state["targets"], port=state["port"], rules_dir=state["rules_dir"],
                     scrape_interval=state["scrape_interval"])
        server.port, server.pid = state["port"], state["pid"]
        return server

    @property
    def config_path(self) -> Path:
        return self.dir / "prometheus.yml"

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    @property
    def log_path(self) -> Path:
        return self.dir / "prometheus.log"

    @property
    def url(self) -> str:
        """Base URL of the running server, such as http://127.0.0.1:9095. Raises PrometheusServerError before start()."""
        if self.port is None:
            raise PrometheusServerError("the Prometheus server is not started. Call start() first.")
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 5.0) -> PrometheusClient:
        """Return a PrometheusClient of this server."""
        return PrometheusClient(self.url, timeout=timeout)

    def write_config(self) -> Path:
        """Write HOME/prometheus/prometheus.yml: global intervals, the rule files and one scrape job per target group."""
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
            },
            "rule_files": [str(self.rules_dir / "*.yml")],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(hosts)}]}
                for job, hosts in self.targets.items()
            ],
        }
        text = "# Written by incidentlab; rewritten at each start.\n" + yaml.safe_dump(config, sort_keys=False)
        return write_atomic(self.config_path, text)

    def is_running(self) -> bool:
        """Return whether the process recorded in the state file runs."""
        state = read_json(self.state_path)
        return bool(state) and _is_our_process(state.get("pid"), state.get("command"))

    def start(self) -> "PrometheusServer":
        """Write the configuration, start `prometheus` on 127.0.0.1 and wait until GET /-/ready returns 200.

        When this home's server already runs, it is reused: the configuration is rewritten and
        reloaded. Returns self. Raises PrometheusServerError when the binary is missing, the
        requested port is busy, or the server exits or is not ready within 30 s.
        """
        binary = prometheus_binary()
        if binary is None:
            raise PrometheusServerError(f"the prometheus binary is not on PATH. {INSTALL_HINT}")
        running = read_json(self.state_path)
        if running and _is_our_process(running.get("pid"), running.get("command")):
            self.port, self.pid = running["port"], running["pid"]
            logger.info("prometheus already runs pid=%d port=%d, reloading its configuration", self.pid, self.port)
            self.write_config()
            self.reload()
            return self

        self.port = _choose_port(self.requested_port)
        self.write_config()
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        process = self._spawn(self._command(binary))
        self._wait_ready(process)
        return self

    def reload(self) -> None:
        """Make the running server read its configuration and rule files again, like `POST /-/reload`.

        Raises PrometheusServerError when the server rejects the configuration or does not respond.
        """
        session = requests.Session()
        session.trust_env = False  # the server is on loopback, never behind HTTP_PROXY
        try:
            with session:
                response = session.post(self.url + "/-/reload", timeout=READY_TIMEOUT)
        except requests.RequestException as exc:
            raise PrometheusServerError(f"POST {self.url}/-/reload failed: {exc}. Check {self.log_path}.") from exc
        if response.status_code != 200:
            raise PrometheusServerError(
                f"prometheus pid={self.pid} rejected its new configuration with HTTP {response.status_code}: "
                f"{response.text.strip()[:300]}. Check {self.config_path} with `promtool check config`."
            )
        logger.info("prometheus pid=%s reloaded %s", self.pid, self.config_path)

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop the recorded server with SIGTERM, then SIGKILL after ``timeout`` seconds.

        Returns whether a running process was stopped. Calling it again does nothing and
        returns False. The state file is removed; the configuration and data stay.
        """
        _reap_spawned()
        state = read_json(self.state_path)
        stopped = False
        if state and _is_our_process(state.get("pid"), state.get("command")):
            stopped = _terminate(state["pid"], state["command"], timeout)
        if state:
            self.state_path.unlink(missing_ok=True)
        self.pid = None
        return stopped

    def _command(self, binary: str) -> list[str]:
        # Loopback only, a short retention, and /-/reload and /-/quit enabled for reload().
        return [
            binary,
            f"--config.file={self.config_path}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--storage.tsdb.retention.time={RETENTION}",
            "--web.enable-lifecycle",
        ]

    def _spawn(self, command: list[str]) -> subprocess.Popen:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # A new session, so the server outlives this Python process and its terminal.
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True, close_fds=True,
            )
        _SPAWNED[process.pid] = process
        self.pid = process.pid
        write_json_atomic(self.state_path, {
            "pid": process.pid, "command": command, "port": self.port, "url": self.url,
            "targets": self.targets, "rules_dir": str(self.rules_dir), "scrape_interval": self.scrape_interval,
            "config": str(self.config_path), "log": str(self.log_path),
            "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        })
        logger.info("started prometheus pid=%d on %s, log %s", process.pid, self.url, self.log_path)
        return process

    def _wait_ready(self, process: subprocess.Popen) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        with PrometheusClient(self.url, timeout=1.0) as client:
            while not client.ready():
                if process.poll() is not None:
                    self.state_path.unlink(missing_ok=True)
                    raise PrometheusServerError(
                        f"prometheus pid={process.pid} exited with code {process.returncode} before it was "
                        f"ready. Last lines of {self.log_path}:\n{_tail(self.log_path)}"
                    )
                if time.monotonic() >= deadline:
                    self.stop(timeout=1.0)
                    raise PrometheusServerError(
                        f"prometheus pid={process.pid} was not ready on {self.url}/-/ready within "
                        f"{READY_TIMEOUT} s, so it was stopped. Last lines of {self.log_path}:\n{_tail(self.log_path)}"
                    )
                time.sleep(POLL_INTERVAL)
        logger.info("prometheus pid=%d ready on %s", process.pid, self.url)


def _check_targets(targets: Any) -> dict[str, list[str]]:
    example = "{'virtengine-validators': ['127.0.0.1:26660']}"
    if not isinstance(targets, dict) or not targets:
        raise ConfigError(f"targets={targets!r} is invalid. Pass a dict of job name to host:port list, like {example}.")
    checked = {}
    for job, hosts in targets.items():
        if not isinstance(job, str) or not _JOB_NAME.match(job):
            raise ConfigError(f"job name {job!r} is invalid. Use letters, digits, '_', '.', ':' or '-'.")
        if isinstance(hosts, str) or not isinstance(hosts, (list, tuple)) or not hosts:
            raise ConfigError(f"job {job!r}: {hosts!r} is not a list of host:port targets, like {example}.")
        checked[job] = [_check_host_port(job, host) for host in hosts]
    return checked


def _check_host_port(job: str, target: Any) -> str:
    host, _, port = target.rpartition(":") if isinstance(target, str) else ("", "", "")
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback if host != "localhost" else True
    except ValueError:
        loopback = False
    if not port.isdigit() or not 0 < int(port) < 65536 or not loopback:
        raise ConfigError(
            f"job {job!r}: target {target!r} is not a loopback host:port. The lab's Prometheus scrapes only "
            "services on this machine: use one like 127.0.0.1:26660."
        )
    return target


def _choose_port(requested: int | None) -> int:
    if requested is not None:
        if not port_is_free(requested):
            raise PrometheusServerError(
                f"port {requested} on 127.0.0.1 is in use. Stop what listens there, or pass port=None to pick a free one."
            )
        return requested
    if classic_ports_allowed() and port_is_free(DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _terminate(pid: int, command: list[str], timeout: float) -> bool:
    """Send SIGTERM, then SIGKILL after ``timeout`` seconds, and wait until the process is gone."""
    logger.info("stopping prometheus pid=%d", pid)
    os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, command, timeout):
        logger.warning("prometheus pid=%d still runs %.3g s after SIGTERM, sending SIGKILL", pid, timeout)
        os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, command, STOP_TIMEOUT):
            raise PrometheusServerError(f"prometheus pid={pid} still runs after SIGKILL. Check it with `ps -p {pid}`.")
    logger.info("prometheus pid=%d stopped", pid)
    return True


def _wait_gone(pid: int, command: list[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        _reap_spawned()
        if not _is_our_process(pid, command):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL / 2)


def _reap_spawned() -> None:
    """Reap the servers that this process started and that have exited, stopped here or by another process."""
    for pid, process in list(_SPAWNED.items()):
        if process.poll() is not None:
            del _SPAWNED[pid]


def _is_our_process(pid: Any, command: Any) -> bool:
    """Return whether ``pid`` runs ``command``, so that a reused pid is never signalled."""
    if not isinstance(pid, int) or pid <= 0 or not command:
        return False
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    # A zombie has an empty command line, so it never matches.
    return [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0")[:-1]] == list(command)


def _tail(path: Path, count: int = LOG_LINES_IN_ERRORS) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(lines[-count:])

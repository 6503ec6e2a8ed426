"""Docker backend: the targets are containers named ``virtengine-*`` on the local Docker daemon.

The lab's own validators, API gateway and client load run from the image incidentlab/validator:local
on the host network, one container per process. Every action goes through the Docker SDK, never
the docker CLI.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal as _signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pandas as pd

from ..config import LabConfig
from ..errors import ConfigError, LocalnetError, TargetNotFound, TargetStateError
from ..localnet import portclaims
from ..localnet.network import Network, ServiceSpec, ValidatorSpec, create_network, load_network
# The same commands, port and readiness checks as the local backend's, so both backends agree on them.
from ..localnet.services import LOCAL_ONLY_KINDS, is_ready, kind_of, ports_column, ready_check_text, service_command, status_entry
from ..localnet.supervisor import FRESH_PORT_ATTEMPTS, ACTIVE_STATUSES, _busy_port, port_conflict, wait_until
from .docker_image import IMAGE, engine_client, image_exists
from .local import TARGET_COLUMNS, TARGET_PREFIX, _parse_signal, _tail_count

__all__ = ["DockerBackend", "HOME_LABEL", "ROLE_LABEL", "PACKAGE_MOUNT"]

logger = logging.getLogger(__name__)

#: Label that records the lab home owning a container. down() removes only the containers of its own home.
HOME_LABEL = "incidentlab.home"
ROLE_LABEL = "incidentlab.role"
#: Substring of the names of listed containers: the lab's own and those of a real VirtEngine localnet.
NAME_FILTER = "virtengine"
#: Mount point of the package's source folder, read-only. The image sets PYTHONPATH=/opt, so python3 finds it.
PACKAGE_MOUNT = "/opt/incidentlab"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: Parts of the engine's error messages that mean the action does not fit the container's state.
STATE_MESSAGES = ("is not paused", "is already paused", "is not running", "cannot start a paused container")
#: Seconds every validator has to respond to GET /health after its container starts (the gateway to GET /metrics).
#: Container and Python start-up do not get faster with time_scale, so this is not scaled.
HEALTH_TIMEOUT = 30.0
#: Seconds to wait until the engine records the exit of a container after SIGKILL.
EXIT_RECORD_TIMEOUT = 10.0
DEFAULT_STOP_TIMEOUT = 10.0
#: Minimum grace period of down() in seconds, as in the local backend.
MIN_DOWN_GRACE_SECONDS = 5
LOG_LINES_IN_ERRORS = 15
#: Seconds to wait for a validator's ports before its container starts. The ports come from the
#: ephemeral range, so a client connection of another process can hold one, and Linux keeps a
#: closed connection's port in TIME_WAIT for 60 s.
PORT_RELEASE_TIMEOUT = 65.0


class DockerBackend:
    """Targets in Docker containers, with the same methods and results as LocalBackend.

    Takes the lab configuration and, for tests, a ``docker.DockerClient`` (one from
    ``docker.from_env()`` when None). ``with_services`` gives a new network file the API gateway
    and the client load, as for the local backend. Raises ConfigError when the Docker engine
    cannot be reached.
    """

    name = "docker"

    def __init__(self, config: LabConfig, *, client: docker.DockerClient | None = None, with_services: bool = True):
        self.config = config
        self.client = client or engine_client()
        self.with_services = with_services

    @property
    def network_path(self) -> Path:
        return self.config.localnet_dir / "network.json"

    def network(self) -> Network | None:
        """Return the lab's network file, or None when up() never created one."""
        return load_network(self.network_path) if self.network_path.exists() else None

    def up(self) -> list[dict]:
        """Create the network file when needed, run one container per validator and wait for /health, then the other services.

        Like `docker run -d --network host` for each process. When a lab container is already
        running or paused, nothing is started. Returns services(). Raises ConfigError when the
        image is missing. Raises LocalnetError when a container cannot be created or a process
        does not become ready, after removing the containers that this call created.
        """
        if not image_exists(self.client):
            raise ConfigError(
                f"the Docker image {IMAGE} is missing; build it with "
                "`python -m incidentlab.backends.docker_image build` (as root, offline)"
            )
        fresh = self.network() is None
        for attempt in range(1, FRESH_PORT_ATTEMPTS + 1):
            network = self._ensure_network()
            if self.is_up():
                logger.info("docker localnet of %s is already up", self.config.home)
                return self.services()
            try:
                self._run_all(network)
            except LocalnetError as exc:
                # Another lab may take a port between our pick and our bind; a network created
                # by this very call can simply pick new ports.
                if not (fresh and attempt < FRESH_PORT_ATTEMPTS and port_conflict(exc)):
                    raise
                logger.warning("new docker localnet hit a busy port (%s); picking new ports, attempt %d", exc, attempt + 1)
                portclaims.release(network.ports(), self.network_path)
                self.network_path.unlink()
                continue
            logger.info("docker localnet up: %d validators, chain_id=%s", len(network.validators), network.chain_id)
            break
        return self.services()

    def _run_all(self, network: Network) -> None:
        created = []
        try:
            # The gateway and the client start once the validators respond, as on the local backend.
            # The VEID service needs numpy and Pillow, which the image lacks, so it gets no container.
            services = [spec for spec in network.services if kind_of(spec) not in LOCAL_ONLY_KINDS]
            for group in (network.validators, services):
                for spec in group:
                    created.append(self._run_container(spec))
                self._wait_healthy(group)
        except BaseException:
            for container in created:
                container.remove(force=True)
            raise

    def down(self, timeout: float | None = None) -> list[dict]:
        """Stop and remove the containers labelled with this lab home, like `docker stop` then `docker rm`.

        Takes the grace period before SIGKILL in seconds, multiplied by ``config.time_scale``. The
        default is 10 s, scaled but never under 5 s. Returns services() as they were after the stop,
        before the removal. Other containers, a real localnet's included, are left alone.
        """
        grace = self._grace(timeout) if timeout is not None else max(self._grace(None), MIN_DOWN_GRACE_SECONDS)
        containers = self._lab_containers()
        with ThreadPoolExecutor(max_workers=max(1, len(containers))) as pool:
            list(pool.map(lambda container: container.stop(timeout=grace), containers))
        services = self.services()
        for container in containers:
            container.remove(force=True)
            logger.info("removed container %s", container.name)
        logger.info("docker localnet down for %s", self.config.home)
        return services

    def is_up(self) -> bool:
        """Return True when at least one container of this lab is running or paused."""
        return any(service["status"] in ACTIVE_STATUSES for service in self.services())

    def services(self) -> list[dict]:
        """Return one dict per container of this lab, shaped like Localnet.services() for `lab status --json`.

        Validators come first, then the other services, in the network file's order.
        """
        network = self.network()
        order = [spec.name for spec in network.specs] if network else []
        specs = {spec.name: spec for spec in network.specs} if network else {}
        services = []
        for container in self._lab_containers():
            state, spec = container.attrs["State"], specs.get(container.name)
            times = {"status": state["Status"], "pid": state["Pid"], "started_at": state["StartedAt"],
                     "finished_at": state["FinishedAt"], "exit_code": state["ExitCode"]}
            if spec is not None:
                services.append(status_entry(spec, **times))
                continue
            # A labelled container that the network file does not list (a file deleted by hand).
            services.append({"name": container.name, "kind": container.labels.get(ROLE_LABEL, "container"),
                             "rpc": "", "metrics": "", "p2p": "", **times})
        rank = {name: index for index, name in enumerate(order)}
        return sorted(services, key=lambda service: (rank.get(service["name"], len(rank)), service["name"]))

    def targets(self) -> pd.DataFrame:
        """Return the containers whose name contains "virtengine", like `docker ps -a`.

        Columns: NAME, KIND, STATUS (the engine's own, such as "Up 16 seconds (Paused)"), PID
        (0 when not running) and PORTS, sorted by name. A lab container lists its ports from
        the network file, because host networking publishes none.
        """
        network = self.network()
        specs = {spec.name: spec for spec in network.specs} if network else {}
        rows = []
        for summary in self.client.api.containers(all=True, filters={"name": NAME_FILTER}):
            name = summary["Names"][0].lstrip("/")
            rows.append({
                "NAME": name,
                "KIND": summary["Labels"].get(ROLE_LABEL, "container"),
                "STATUS": summary["Status"],
                "PID": self._inspect_raw(name)["Pid"],
                "PORTS": _ports_column(specs.get(name), summary.get("Ports") or []),
            })
        return pd.DataFrame(rows, columns=TARGET_COLUMNS).sort_values("NAME", ignore_index=True)

    def inspect(self, name: str) -> dict:
        """Return the container's ``.State`` like ``docker inspect``, without Health.

        Keys: Status, Running, Paused, Restarting, OOMKilled, Dead, Pid, ExitCode, Error,
        StartedAt, FinishedAt. Raises TargetNotFound.
        """
        state = self._inspect_raw(name)
        keys = ("Status", "Running", "Paused", "Restarting", "OOMKilled", "Dead", "Pid", "ExitCode", "Error", "StartedAt", "FinishedAt")
        return {key: state.get(key) for key in keys}

    def logs(self, name: str, tail: int | str | None = 50, timestamps: bool = False) -> str:
        """Return the last ``tail`` lines of the container's output, like ``docker logs --tail``.

        ``tail`` is a number of lines, or "all" (or None) for the whole log. With ``timestamps``
        each line starts with the engine's RFC 3339 time. Raises TargetNotFound, and ConfigError
        for an invalid ``tail``.
        """
        count = _tail_count(tail)
        container = self.container(name)
        if count == 0:
            return ""
        with self._engine_errors(name):
            output = container.logs(stdout=True, stderr=True, tail="all" if count is None else count, timestamps=timestamps)
        return output.decode("utf-8", "replace")

    def stats(self, name: str) -> dict:
        """Return one sample of the container's resource use, computed like ``docker stats --no-stream``.

        Returns name, cpu_percent (100 is one full CPU), memory_usage and memory_limit in bytes
        (usage without the inactive page cache, as the CLI shows it), memory_percent and pids.
        A container that is not running gives zeros. Raises TargetNotFound.
        """
        container = self.container(name)
        with self._engine_errors(name):
            sample = container.stats(stream=False)
        memory = sample.get("memory_stats") or {}
        usage, limit = _memory_usage(memory), memory.get("limit") or 0
        return {
            "name": name,
            "cpu_percent": _cpu_percent(sample),
            "memory_usage": usage,
            "memory_limit": limit,
            "memory_percent": 100.0 * usage / limit if limit else 0.0,
            "pids": (sample.get("pids_stats") or {}).get("current", 0),
        }

    def pause(self, name: str) -> dict:
        """Freeze every process of the container, like `docker pause`, and return its new State.

        Clients still connect and never get a response. Raises TargetStateError with the
        engine's message when the container is already paused or not running.
        """
        return self._act(name, "pause", lambda container: container.pause())

    def unpause(self, name: str) -> dict:
        """Resume a paused container like `docker unpause` and return its new State.

        Raises TargetStateError with the engine's message when the container is not paused.
        """
        return self._act(name, "unpause", lambda container: container.unpause())

    def stop(self, name: str, timeout: float = DEFAULT_STOP_TIMEOUT) -> dict:
        """Stop the container like `docker stop`: SIGTERM, then SIGKILL after the grace period.

        ``timeout`` is the grace period in seconds, multiplied by ``config.time_scale`` and rounded
        up to whole seconds, because the Engine API takes whole seconds. A container that is not
        running is left as it is. Returns the new State.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ConfigError(f"timeout={timeout!r} is invalid; give the grace period in seconds, 0 or more")
        grace = self._grace(timeout)
        return self._act(name, f"stop with {grace} s grace", lambda container: container.stop(timeout=grace))

    def kill(self, name: str, signal: int | str = "SIGKILL") -> dict:
        """Send a signal to the container's main process like `docker kill --signal` and return its new State.

        ``signal`` is a name ("SIGKILL", "KILL", "term") or a number. After SIGKILL the call waits
        until the engine records the exit (code 137). Raises TargetStateError with the engine's
        message when the container is not running, and ConfigError for an unknown signal.
        """
        signum = _parse_signal(signal)
        settled = (lambda: not self._inspect_raw(name)["Running"]) if signum == _signal.SIGKILL else None
        return self._act(name, f"kill with {_signal.Signals(signum).name}", lambda container: container.kill(signal=signum), settled)

    def start(self, name: str) -> dict:
        """Start a stopped container like `docker start` and return its new State.

        A lab process keeps its command, data and ports, and the call returns once it is ready (a
        validator responds to GET /health, the gateway to GET /metrics). A running container is left as
        it is. Raises TargetStateError with the engine's message when it is paused, and
        LocalnetError when it does not become ready.
        """
        network = self.network()
        spec = next((spec for spec in network.specs if spec.name == name), None) if network else None
        if spec is not None and not self._inspect_raw(name)["Running"]:
            _wait_ports_free(spec)
        state = self._act(name, "start", lambda container: container.start())
        if spec is not None:
            self._wait_healthy([spec])
            state = self.inspect(name)
        return state

    def restart(self, name: str, timeout: float = DEFAULT_STOP_TIMEOUT) -> dict:
        """Stop then start the container like `docker restart` and return its new State."""
        self.stop(name, timeout)
        return self.start(name)

    def endpoints(self) -> dict[str, dict[str, str]]:
        """Return the probe endpoints of each lab validator: ``{name: {"rpc": url, "metrics": url}}``.

        NOTE: containers of a real localnet are listed by targets() but get no endpoints here,
        because their ports are not in this lab's network file.
        """
        return {
            service["name"]: {"rpc": service["rpc"], "metrics": service["metrics"]}
            for service in self.services()
            if service["name"].startswith(TARGET_PREFIX) and service["kind"] == "validator"
        }

    def container(self, name: str):
        """Return the SDK's Container object of a target, found by its exact name like ``docker container inspect``.

        For calls with no backend method, such as ``exec_run``. Raises TargetNotFound.
        """
        with self._engine_errors(name):
            container = self.client.containers.get(name)
        # get() also matches an id prefix; only an exact name counts.
        if container.name != name:
            raise TargetNotFound(str(name), self._names())
        return container

    # -- private helpers ----------------------------------------------------------------

    def _ensure_network(self) -> Network:
        self.config.ensure_home()
        network = self.network()
        if network is None:
            return create_network(
                self.config.localnet_dir, chain_id=self.config.chain_id, validators=self.config.validators,
                time_scale=self.config.time_scale, classic_ports=self.config.classic_ports,
                with_services=self.with_services,
            )
        recorded = (len(network.validators), network.chain_id, network.time_scale)
        configured = (self.config.validators, self.config.chain_id, self.config.time_scale)
        if recorded != configured:
            raise LocalnetError(
                f"{self.network_path} has validators, chain_id, time_scale = {recorded}, but the configuration "
                f"has {configured}. Use the same settings, or run down() and delete {self.config.localnet_dir}."
            )
        return network

    def _run_container(self, spec: ValidatorSpec | ServiceSpec):
        self._remove_stale(spec.name)
        _wait_ports_free(spec)
        localnet_dir = str(self.config.localnet_dir)
        with self._engine_errors(spec.name):
            container = self.client.containers.create(
                IMAGE,
                command=service_command(spec, self.network_path, python="python3"),
                name=spec.name,
                network_mode="host",
                labels={HOME_LABEL: str(self.config.home), ROLE_LABEL: kind_of(spec)},
                volumes={str(PACKAGE_DIR): {"bind": PACKAGE_MOUNT, "mode": "ro"}, localnet_dir: {"bind": localnet_dir, "mode": "rw"}},
                # The host user's ids, so that node data in the lab home stays owned by that user.
                user=f"{os.getuid()}:{os.getgid()}",
            )
            container.start()
        logger.info("started container %s id=%s kind=%s ports=%s", spec.name, container.short_id, kind_of(spec),
                    ports_column(spec) or "none")
        return container

    def _remove_stale(self, name: str) -> None:
        # A stopped container of this lab from an earlier up() is replaced. A container with the
        # same name but another owner is never touched.
        try:
            container = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        if container.labels.get(HOME_LABEL) != str(self.config.home):
            owner = container.labels.get(HOME_LABEL, "no incidentlab lab")
            raise LocalnetError(
                f"a container named {name} already exists and belongs to {owner}; remove it with "
                f"`docker rm -f {name}` or run down() in that lab first"
            )
        container.remove(force=True)
        logger.info("removed the old container %s of this lab", name)

    def _wait_healthy(self, specs) -> None:
        pending, deadline = list(specs), time.monotonic() + HEALTH_TIMEOUT
        while pending:
            for spec in list(pending):
                state = self._inspect_raw(spec.name)
                if not state["Running"]:
                    raise self._start_error(spec, f"exited with code {state['ExitCode']} before it was ready")
                if is_ready(spec, state["Pid"]):
                    pending.remove(spec)
            if pending and time.monotonic() > deadline:
                raise self._start_error(pending[0], f"was not ready within {HEALTH_TIMEOUT:.0f} s")
            if pending:
                time.sleep(0.05)

    def _start_error(self, spec: ValidatorSpec | ServiceSpec, failure: str) -> LocalnetError:
        lines = self.logs(spec.name, tail=LOG_LINES_IN_ERRORS).rstrip() or "(empty)"
        return LocalnetError(
            f"container {spec.name} {failure}{ready_check_text(spec)}. "
            f"Last lines of `docker logs {spec.name}`:\n{lines}\n"
            "If another program uses the port, stop that program."
        )

    def _lab_containers(self) -> list:
        return self.client.containers.list(all=True, filters={"label": f"{HOME_LABEL}={self.config.home}"})

    def _inspect_raw(self, name: str) -> dict:
        return self.container(name).attrs["State"]

    def _act(self, name: str, action: str, call, settled=None) -> dict:
        # ``settled`` is a condition that the engine's record must reach before the call returns.
        if not str(name).startswith(TARGET_PREFIX):
            raise ConfigError(f"target {name!r} is not acted on: actions apply only to containers whose name starts with {TARGET_PREFIX!r}")
        container = self.container(name)
        pid = container.attrs["State"]["Pid"]
        with self._engine_errors(name):
            call(container)
        if settled is not None and not wait_until(settled, EXIT_RECORD_TIMEOUT):
            raise LocalnetError(f"container {name} still runs {EXIT_RECORD_TIMEOUT:.0f} s after {action}; read the daemon's log")
        state = self.inspect(name)
        logger.info("%s: container %s pid=%s, now %s pid=%s", action, name, pid, state["Status"], state["Pid"])
        return state

    @contextlib.contextmanager
    def _engine_errors(self, name: str):
        try:
            yield
        except docker.errors.NotFound as exc:
            raise TargetNotFound(str(name), self._names()) from exc
        except docker.errors.APIError as exc:
            message = str(exc.explanation or exc)
            if any(part in message.lower() for part in STATE_MESSAGES):
                status = self._status(name)
                raise TargetStateError(name, status, f"{message} (target {name}, status {status})") from exc
            raise LocalnetError(f"the Docker engine failed on container {name}: {message}") from exc

    def _names(self) -> list[str]:
        summaries = self.client.api.containers(all=True, filters={"name": NAME_FILTER})
        return sorted(summary["Names"][0].lstrip("/") for summary in summaries)

    def _status(self, name: str) -> str:
        try:
            return self.client.containers.get(name).status
        except docker.errors.DockerException:
            return "unknown"

    def _grace(self, timeout: float | None) -> int:
        return math.ceil((DEFAULT_STOP_TIMEOUT if timeout is None else timeout) * self.config.time_scale)


def _ports_column(spec: ValidatorSpec | ServiceSpec | None, published: list[dict]) -> str:
    if spec is not None:
        return ports_column(spec)
    return ", ".join(
        f"{port.get('IP', '')}:{port['PublicPort']}->{port['PrivatePort']}/{port['Type']}" if "PublicPort" in port
        else f"{port['PrivatePort']}/{port['Type']}"
        for port in published
    )


def _cpu_percent(sample: dict) -> float:
    # The docker CLI's formula: the container's share of the host's CPU time between the two
    # samples that the daemon takes, times the number of online CPUs.
    cpu, previous = sample.get("cpu_stats") or {}, sample.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (previous.get("cpu_usage") or {}).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - previous.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    if cpu_delta <= 0 or system_delta <= 0:
        return 0.0
    return 100.0 * cpu_delta / system_delta * online


def _memory_usage(memory: dict) -> int:
    # Like the docker CLI, the inactive page cache is left out: total_inactive_file on cgroup v1,
    # inactive_file on cgroup v2.
    usage, details = memory.get("usage", 0), memory.get("stats") or {}
    inactive = details.get("total_inactive_file", details.get("inactive_file", 0))
    return usage - inactive if inactive < usage else usage


def _wait_ports_free(spec: ValidatorSpec | ServiceSpec) -> None:
    busy = _busy_port(spec)
    if busy is None:
        return
    logger.warning("port %d (%s of %s) on 127.0.0.1 is in use (%s); waiting up to %.0f s for its release",
                   busy[1], busy[0], spec.name, busy[2], PORT_RELEASE_TIMEOUT)
    if wait_until(lambda: _busy_port(spec) is None, PORT_RELEASE_TIMEOUT):
        return
    kind, port, reason = _busy_port(spec) or ("", 0, "")
    raise LocalnetError(
        f"port {port} ({kind} of {spec.name}) on 127.0.0.1 is still in use after {PORT_RELEASE_TIMEOUT:.0f} s: {reason}. "
        f"Stop the program that uses it (`ss -tanp 'sport = :{port}'` shows it), or run down() and delete "
        f"{Path(spec.home).parent / 'network.json'} so that up() picks free ports."
    )

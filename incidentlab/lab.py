"""Lab: the one object a notebook holds, over the embedded localnet or another backend.

It lists and inspects targets, runs remediation actions (each one lands in the timeline of
the running simulation), probes the chain and starts simulations.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .config import BACKENDS, LabConfig, default_home
from .errors import ConfigError, ScenarioError

if TYPE_CHECKING:
    import pandas as pd

    from .chaos.faults import Fault
    from .probes.rpc import CometBFTClient
    from .scenarios.base import Simulation

__all__ = ["Lab"]

logger = logging.getLogger(__name__)

#: Backends this version can run; the others are planned and rejected with a clear error.
AVAILABLE_BACKENDS = ("local", "docker")
#: Remediation actions that change the system and so are recorded in the timeline.
ACTIONS = ("start", "stop", "restart", "pause", "unpause", "kill")


class Lab:
    """A connected lab: its configuration, its backend and the simulation running in it."""

    def __init__(self, config: LabConfig, backend) -> None:
        self.config = config
        self.backend = backend
        self.simulation_running: Simulation | None = None
        self._rpc: CometBFTClient | None = None
        self._monitor = None
        self._cluster = None
        self._veid = None

    # -- connecting --------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        backend: str = "auto",
        *,
        home: str | Path | None = None,
        validators: int | None = None,
        time_scale: float | None = None,
        start: bool = True,
        reconcile: bool = True,
    ) -> "Lab":
        """Connect to the lab in ``home`` (default: $INCIDENTLAB_HOME or ~/incident-lab).

        ``backend="auto"`` picks Docker when containers named ``virtengine-*`` run there, else the
        embedded localnet as local processes. With ``start``
        the localnet is started when it is not up; a running one is reused as it is, and
        then ``validators`` and ``time_scale`` must match it or be None. With ``reconcile``,
        faults left open by a process that died are undone (see ``reconcile()``).
        Raises ConfigError for an unknown or unavailable backend or a mismatched setting.
        """
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if backend not in ("auto", *AVAILABLE_BACKENDS):
            raise ConfigError(
                f"the {backend} backend is not available in this version of incidentlab; "
                "use backend='local' (the embedded localnet), 'docker' or 'auto'"
            )
        home_path = Path(home).expanduser() if home else default_home()
        name = _docker_or_local(home_path) if backend == "auto" else backend
        config = _config_for(home_path, validators, time_scale, name)
        config.ensure_home()
        lab = cls(config, _make_backend(name, config))
        _widen_tables()
        if start and not lab.backend.is_up():
            logger.info("starting the embedded localnet in %s", config.home)
            lab.backend.up()
        # Faults left open by a process that died (a killed kernel, a SIGKILL) are undone now.
        if reconcile and lab.backend.is_up():
            for entry in lab.reconcile():
                logger.warning("undid fault %s on %s: %s", entry["id"], entry.get("target"), entry["note"])
        return lab

    def down(self) -> list[dict]:
        """Stop every localnet process of this lab and its Prometheus (``incidentlab lab down``)."""
        if self.simulation_running is not None:
            self.simulation_running.close()
        self.monitor.close()
        self.monitor.stop_prometheus()
        return self.backend.down()

    # -- monitoring ------------------------------------------------------------------------

    @property
    def monitor(self):
        """The lab's monitoring: a real Prometheus where installed, else the embedded scraper."""
        from .monitoring.lab_monitor import LabMonitor

        if self._monitor is None:
            self._monitor = LabMonitor(self)
        return self._monitor

    def start_monitoring(self) -> "pd.DataFrame":
        """Start Prometheus where it is installed, and the lab's own scraper and alert evaluation.

        Returns a table saying what runs. Queries and alerts use Prometheus when it runs, and
        the lab's own scrapes otherwise, so the exercises work either way.
        """
        import pandas as pd

        from .monitoring.prometheus_server import prometheus_binary

        rows = []
        if prometheus_binary():
            rows.append({"component": "Prometheus", "status": f"running at {self.monitor.start_prometheus().url}"})
        else:
            rows.append({"component": "Prometheus", "status": "not installed: the lab's own scrapes answer instead"})
        self.alerts(source="embedded")
        rows.append({"component": "embedded scraper", "status": f"scraping {len(self.monitor.scraper().targets)} targets"})
        return pd.DataFrame(rows)

    def alerts(self, source: str = "auto") -> "pd.DataFrame":
        """Return the pending and firing alerts (alertname, state, severity, target, value, ...).

        They come from Prometheus when it runs for this lab, else from the same rules evaluated
        by the lab on its embedded scraper (which starts on the first call and needs a few
        scrapes of history).
        """
        return self.monitor.alerts(source)

    def error_increase(self, window: float | None = None) -> "pd.DataFrame":
        """Return the gateway's 5xx count, request count and error ratio over a recent window.

        Prometheus answers when it runs for this lab, otherwise the embedded scraper does.
        """
        return self.monitor.error_increase(window)

    def watch_requests(self, seconds: float = 10, *, mode: str = "interactive") -> None:
        """Plot requests by status class and the 5xx ratio live for ``seconds`` (one figure in batch mode)."""
        simulation = self.simulation_running
        timeline = simulation.incident.timeline if simulation is not None and simulation.incident else []
        self.monitor.watch_requests(seconds, mode=mode, timeline=timeline)

    def query(self, expr: str) -> "pd.DataFrame":
        """Run a PromQL instant query on the lab's Prometheus, like the lab document's curl calls."""
        return self.monitor.client().query(expr)

    # -- the provider's cluster --------------------------------------------------------------

    @property
    def cluster(self):
        """The provider's Kubernetes cluster (a ProviderCluster), connected on first use.

        The embedded cluster of the localnet, unless the configuration names a real cluster's
        context (``kube_context``); see incidentlab.backends.kubernetes.
        """
        from .backends.kubernetes import ProviderCluster

        if self._cluster is None:
            if self.config.kube_context:
                self._cluster = ProviderCluster.from_kubeconfig(self.config, lab=self)
            else:
                self._cluster = ProviderCluster.embedded_for(self)
        return self._cluster
    # -- VEID --------------------------------------------------------------------------

    @property
    def veid(self):
        """Client of the VEID scoring service: score, revisions, diff, deploy, rollback and the investigation tools.

        The service runs on the local backend only; on another backend the first call raises ScenarioError.
        """
        from .veid.client import VeidClient

        if self._veid is None:
            self._veid = VeidClient(self)
        return self._veid

    # -- targets -----------------------------------------------------------------------

    def targets(self) -> "pd.DataFrame":
        """Return the lab's targets as a table like ``docker ps -a``.

        While a latency fault routes a validator through a proxy, its PORTS show the proxy's RPC
        port, the one clients reach it through, as ``lab status --json`` does.
        """
        from .localnet.routes import read_routes

        table = self.backend.targets()
        for name, route in read_routes(self.config.localnet_dir).items():
            spec = self.backend.network().validator(name) if name in self.validators() else None
            if spec is None or "rpc" not in route:
                continue
            rows = table["NAME"] == name
            table.loc[rows, "PORTS"] = table.loc[rows, "PORTS"].str.replace(
                f"127.0.0.1:{spec.ports['rpc']}->rpc", f"127.0.0.1:{route['rpc']}->rpc (via latency proxy)", regex=False)
        return table

    def inspect(self, name: str) -> dict:
        """Return a target's State like ``docker inspect --format '{{json .State}}'``."""
        return self.backend.inspect(name)

    def logs(self, name: str, tail: int | str = 50, timestamps: bool = True) -> str:
        """Return the last ``tail`` lines of a target's log, like ``docker logs --tail``."""
        return self.backend.logs(name, tail=tail, timestamps=timestamps)

    def inspect_all(self) -> "pd.DataFrame":
        """Return every target's State as one table (Status, ExitCode, OOMKilled, StartedAt, ...)."""
        import pandas as pd

        rows = [{"NAME": name, **self.backend.inspect(name)} for name in self.backend.targets()["NAME"]]
        return pd.DataFrame(rows)

    def recent_logs(self, tail: int = 5) -> "pd.DataFrame":
        """Return the last ``tail`` log lines of every target, like ``docker logs --tail`` on each."""
        import pandas as pd

        rows = []
        for name in self.backend.targets()["NAME"]:
            for line in self.backend.logs(name, tail=tail, timestamps=False).splitlines():
                rows.append({"target": name, "line": line})
        return pd.DataFrame(rows, columns=["target", "line"])

    def status(self) -> dict:
        """Return the lab as ``incidentlab lab status --json`` prints it."""
        from .localnet.routes import read_routes

        network = self.backend.network()
        services = self.backend.services()
        # While a latency fault routes a validator through a proxy, clients reach it there.
        routes = read_routes(self.config.localnet_dir)
        for service in services:
            route = routes.get(service["name"], {})
            if "rpc" in route:
                service["direct_rpc"] = service["rpc"]
                service["rpc"] = f"http://127.0.0.1:{route['rpc']}"
        prometheus = self.monitor.prometheus()
        return {
            "backend": self.backend.name,
            "chain_id": network.chain_id if network else self.config.chain_id,
            "home": str(self.config.home),
            "time_scale": network.time_scale if network else self.config.time_scale,
            "prometheus": prometheus.url if prometheus is not None else None,
            "services": services,
        }

    def validators(self) -> list[str]:
        """Return the names of the validator targets."""
        return [service["name"] for service in self.status()["services"] if service["kind"] == "validator"]

    # -- actions (recorded in the running simulation's timeline) -------------------------

    def start(self, name: str) -> dict:
        """Start a stopped target, like ``docker start``; returns its new State."""
        return self._act("start", name)

    def stop(self, name: str, timeout: float = 10) -> dict:
        """Stop a target (SIGTERM, then SIGKILL after ``timeout`` seconds), like ``docker stop``."""
        return self._act("stop", name, timeout=timeout)

    def restart(self, name: str) -> dict:
        """Stop then start a target, like ``docker restart``."""
        return self._act("restart", name)

    def pause(self, name: str) -> dict:
        """Freeze a target (SIGSTOP), like ``docker pause``."""
        return self._act("pause", name)

    def unpause(self, name: str) -> dict:
        """Resume a frozen target (SIGCONT), like ``docker unpause``."""
        return self._act("unpause", name)

    def kill(self, name: str, signal: str | int = "SIGKILL") -> dict:
        """Send a signal to a target, like ``docker kill --signal``."""
        return self._act("kill", name, signal=signal)

    def _act(self, action: str, name: str, **options) -> dict:
        simulation = self.simulation_running
        state = getattr(self.backend, action)(name, **options)
        if simulation is not None:
            simulation.record_action(action, name, state, **options)
        return state

    # -- faults --------------------------------------------------------------------------

    def fault(self, kind: str, target: str, **params) -> "Fault":
        """Create a fault of ``kind`` (pause, pause-cycle, stop, kill, restart, cpu-stress, veid-bad-revision) on ``target``.

        Use it as a context manager, or call ``inject()`` and ``revert()``. Pass ``dry_run=True``
        to see the plan only. Raises ConfigError for an unknown kind.
        """
        from .chaos.faults import FAULTS

        if kind not in FAULTS:
            raise ConfigError(f"unknown fault kind {kind!r}; use one of {', '.join(sorted(FAULTS))}")
        return FAULTS[kind](self, target, **params)

    def halt(self) -> "pd.DataFrame":
        """Undo every open fault at once, this process's and any other's; return the journal.

        During a simulation the halt is a remediation action and lands in its timeline.
        """
        from .chaos.guard import revert_all

        undone = revert_all("halt") + len(self.reconcile(force=True, reason="halt requested"))
        simulation = self.simulation_running
        if simulation is not None and simulation.incident is not None:
            simulation.record_action("halt", "all faults", {"Status": f"{undone} fault(s) undone"})
        return self.journal()

    def reconcile(self, *, force: bool = False, reason: str = "cleanup requested") -> list[dict]:
        """Undo the journal's orphaned faults (``force``: every open fault); return the entries acted on."""
        from .chaos.cleanup import reconcile

        return reconcile(self.config.home, {self.backend.name: self.backend}, force=force, reason=reason)

    def journal(self) -> "pd.DataFrame":
        """Return the fault journal: every fault, open or reverted, with its state and times."""
        from .chaos.journal import Journal

        return Journal(self.config.home).frame()

    # -- probes ------------------------------------------------------------------------

    @property
    def rpc(self) -> "CometBFTClient":
        """CometBFT RPC client of the first validator (the node at the classic port 26657)."""
        from .probes.rpc import CometBFTClient

        if self._rpc is None:
            first = next(s for s in self.status()["services"] if s["kind"] == "validator")
            self._rpc = CometBFTClient(first["rpc"], timeout=self.probe_timeout)
        return self._rpc

    def rpc_for(self, name: str) -> "CometBFTClient":
        """Return a CometBFT RPC client for the validator ``name``."""
        from .probes.rpc import CometBFTClient

        for service in self.status()["services"]:
            if service["name"] == name and "rpc" in service:
                return CometBFTClient(service["rpc"], timeout=self.probe_timeout)
        self.backend.inspect(name)  # raises TargetNotFound with the known names
        raise ScenarioError(f"target {name!r} has no CometBFT RPC endpoint; only validators have one "
                            f"({', '.join(self.validators())})")

    @property
    def probe_timeout(self) -> float:
        """Read timeout of probes in seconds: long enough for a healthy node, short for a frozen one."""
        return max(0.5, min(2.0, 2.0 * self.config.time_scale))

    def endpoints(self) -> dict[str, str]:
        """Return {validator name: RPC URL}, through a latency fault's proxy while one is active."""
        return {s["name"]: s["rpc"] for s in self.status()["services"] if s["kind"] == "validator"}

    def heights(self, count: int = 10, interval: float | None = None, *, wide: bool = True) -> "pd.DataFrame":
        """Probe every validator's /status ``count`` times, ``interval`` seconds apart (default one block time).

        This is the lab document's loop of ``curl .../status`` calls. With ``wide`` the table has
        one row per round and one column per validator, showing the height or the error kind
        (refused, timeout); otherwise one row per sample (time, target, ok, height, ...).
        """
        from .probes.sampler import sample_heights

        if interval is None:
            interval = self.block_time
        endpoints = self.endpoints()
        samples = sample_heights(endpoints, count=count, interval=interval, timeout=self.probe_timeout)
        if not wide:
            return samples
        samples["round"] = samples.index // len(endpoints)
        samples["value"] = samples["height"].astype("string").where(samples["ok"], samples["error"])
        table = samples.pivot(index="round", columns="target", values="value")
        table.insert(0, "time", samples.groupby("round")["time"].min().dt.strftime("%H:%M:%S.%f").str[:-3])
        table.columns.name = None
        return table

    def gateway_url(self) -> str:
        """Return the API gateway's REST base URL (port 1317 upstream); raises ScenarioError without one."""
        for service in self.status()["services"]:
            if service.get("kind") == "gateway":
                return service["rest"]
        raise ScenarioError(f"the localnet in {self.config.home} has no API gateway; run `incidentlab lab down`, "
                            f"remove {self.config.localnet_dir} and start the lab again to create one")

    def state_history(self, count: int = 10, interval: float | None = None) -> "pd.DataFrame":
        """Inspect every target ``count`` times and return one row per round with each target's Status.

        A single ``docker inspect`` can miss a target that flaps between running and paused; a
        few rounds, one block time apart by default, show the pattern.
        """
        import datetime as _dt
        import time

        import pandas as pd

        interval = self.block_time if interval is None else interval
        rows = []
        for _ in range(count):
            row = {"time": _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]}
            row.update({name: self.backend.inspect(name)["Status"] for name in self.backend.targets()["NAME"]})
            rows.append(row)
            time.sleep(interval)
        return pd.DataFrame(rows)

    def http_status(self, url: str | None = None, *, count: int = 10, interval: float | None = None) -> "pd.DataFrame":
        """GET ``url`` ``count`` times and return time, code, latency and error kind of each request.

        The lab document's loop of ``curl -w "%{http_code}"`` calls. ``url`` defaults to the
        first validator's ``/status`` (port 26657 upstream); ``interval`` to one block time. A
        request that gets no response has code 0, as curl prints 000.
        """
        from .probes.http import sample_http

        url = url or self.endpoints()[self.validators()[0]] + "/status"
        interval = self.block_time if interval is None else interval
        return sample_http(url, count=count, interval=interval, timeout=self.probe_timeout)

    @property
    def block_time(self) -> float:
        """Expected seconds between blocks when every validator is up (timeout_commit, scaled)."""
        return max(0.05, 1.0 * self.config.time_scale)

    def preflight(self, *, tools: bool = False) -> "pd.DataFrame":
        """Return a table of checks (check, ok, observed, meaning): RPCs, chain progress, metrics, gateway.

        With ``tools`` it also reports the lab home, Prometheus, Docker and a cluster, each with
        what its presence or absence means for the exercises.
        """
        from .probes.preflight import preflight

        return preflight(self, tools=tools)

    # -- simulations -------------------------------------------------------------------

    def simulation(self, scenario: str, **options) -> "Simulation":
        """Create the simulation ``scenario`` (like "node-down") in this lab.

        Options are the simulation's: learner, seed, mode, answers_path, variant.
        Raises ScenarioError for an unknown scenario, naming the known ones.
        """
        from .scenarios import create

        if self.simulation_running is not None and self.simulation_running.active:
            raise ScenarioError(
                f"simulation {self.simulation_running.scenario_id!r} is still running in this lab; "
                "call its close() before starting another"
            )
        simulation = create(scenario, self, **options)
        self.simulation_running = simulation
        return simulation

    def __repr__(self) -> str:
        return f"Lab(backend={self.backend.name!r}, home={str(self.config.home)!r})"


def _widen_tables() -> None:
    """Let notebook tables show whole log lines and port lists (pandas cuts cells at 50 characters)."""
    import pandas as pd

    if pd.get_option("display.max_colwidth") == 50:
        pd.set_option("display.max_colwidth", 200)


def _make_backend(name: str, config: LabConfig):
    if name == "docker":
        from .backends.docker import DockerBackend

        return DockerBackend(config)
    from .backends.local import LocalBackend

    return LocalBackend(config)


def _docker_or_local(home: Path) -> str:
    """Return "docker" when Docker runs containers named virtengine-* for this lab, else "local".

    Containers of this lab home count, and so do those of a real localnet (no incidentlab label);
    another lab home's containers do not.
    """
    try:
        import docker

        client = docker.from_env(timeout=3)
        running = client.containers.list(filters={"name": "virtengine-"})
    except Exception as exc:  # no SDK, no engine, no permission: the embedded localnet it is
        logger.debug("no Docker targets (%s); using the local backend", exc)
        return "local"
    home_label = str(home.expanduser().resolve())
    for container in running:
        owner = container.labels.get("incidentlab.home")
        if owner is None or owner == home_label:
            return "docker"
    return "local"


def _config_for(home: Path, validators: int | None, time_scale: float | None, backend: str = "local") -> LabConfig:
    """Build the configuration, taking the settings of an existing localnet in ``home``.

    A stopped localnet whose settings differ from the requested ones is removed so that a new
    one is created; a running one is never replaced, and the mismatch raises ConfigError.
    """
    from .localnet.network import load_network

    requested = LabConfig(home=home, backend=backend, validators=4 if validators is None else validators,
                          time_scale=1.0 if time_scale is None else time_scale)
    network_file = requested.localnet_dir / "network.json"
    if not network_file.exists():
        return requested
    try:
        network = load_network(network_file)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"the localnet file {network_file} is unreadable ({exc}); run `incidentlab lab down` "
            f"and remove {network_file.parent} to create a new localnet"
        ) from exc
    existing = LabConfig(home=home, backend=backend, validators=len(network.validators),
                         time_scale=network.time_scale, chain_id=network.chain_id)
    mismatches = [
        f"{setting}={wanted!r} (the localnet has {actual!r})"
        for setting, wanted, actual in (("validators", validators, existing.validators),
                                        ("time_scale", time_scale, existing.time_scale))
        if wanted is not None and float(wanted) != float(actual)
    ]
    if not mismatches:
        return existing
    if _make_backend(backend, existing).is_up():
        raise ConfigError(
            f"{' and '.join(mismatches)}: not what the running localnet in {home} uses; "
            "run `incidentlab lab down` first, or use another lab home (INCIDENTLAB_HOME)"
        )
    logger.info("recreating the stopped localnet in %s for %s", home, ", ".join(mismatches))
    shutil.rmtree(requested.localnet_dir)
    return requested

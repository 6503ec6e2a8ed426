"""Preflight checks before a simulation: targets, chain progress, metrics and the optional tools.

Each row says whether the thing is there and what that means for the exercises, so a missing
optional tool (Prometheus, Docker, a cluster) reads as a choice, not a failure.
"""

from __future__ import annotations

import shutil
import time
from typing import TYPE_CHECKING

import requests

from .rpc import probe_status

if TYPE_CHECKING:
    import pandas as pd

    from ..lab import Lab

__all__ = ["preflight", "PREFLIGHT_COLUMNS"]

PREFLIGHT_COLUMNS = ["check", "ok", "observed", "meaning"]


def preflight(lab: "Lab", *, tools: bool = False) -> "pd.DataFrame":
    """Return a table of checks (check, ok, observed, meaning).

    Always: each validator's RPC, the chain's progress, each service's /metrics and the gateway.
    With ``tools``: the lab home, Prometheus, the Docker engine and a Kubernetes cluster too.
    """
    import pandas as pd

    rows = []
    first = {name: probe_status(url, lab.probe_timeout) for name, url in lab.endpoints().items()}
    for name, sample in first.items():
        observed = f"height {sample['height']}" if sample["ok"] else f"{sample['error']}: {sample['detail']}"
        rows.append(_row(f"{name} RPC healthy", sample["ok"], observed,
                         "answers /status" if sample["ok"] else "start it: lab.start(name), or `incidentlab lab up`"))

    # Two and a half block times show whether the chain is progressing.
    time.sleep(2.5 * lab.block_time)
    second = {name: probe_status(url, lab.probe_timeout) for name, url in lab.endpoints().items()}
    before = max((s["height"] for s in first.values() if s["ok"]), default=0)
    after = max((s["height"] for s in second.values() if s["ok"]), default=0)
    rows.append(_row("chain progressing", after > before, f"height {before} -> {after}",
                     "blocks are being committed" if after > before
                     else "no new block: fewer than 2/3 of the voting power may be online"))

    rows += _service_rows(lab)
    if tools:
        rows += _tool_rows(lab)
    return pd.DataFrame(rows, columns=PREFLIGHT_COLUMNS)


def _service_rows(lab: "Lab") -> list[dict]:
    rows = []
    services = lab.status()["services"]
    answering = [s["name"] for s in services if s.get("metrics") and _answers(s["metrics"], lab.probe_timeout)]
    with_metrics = [s["name"] for s in services if s.get("metrics")]
    rows.append(_row("metrics endpoints answer", len(answering) == len(with_metrics),
                     f"{len(answering)} of {len(with_metrics)}",
                     "the embedded scraper and Prometheus can collect every service"))
    gateways = [s for s in services if s.get("kind") == "gateway"]
    for gateway in gateways:
        url = gateway["rest"] + "/cosmos/base/tendermint/v1beta1/syncing"
        ok = _answers(url, lab.probe_timeout)
        rows.append(_row(f"{gateway['name']} answers", ok, gateway["rest"],
                         "clients reach the chain through the API gateway" if ok
                         else "the gateway is down: requests from clients fail"))
    if not gateways:
        rows.append(_row("API gateway", False, "not part of this localnet",
                         "the error-rate exercises need it: recreate the lab with a current incidentlab"))
    return rows


def _tool_rows(lab: "Lab") -> list[dict]:
    rows = [_row("lab home", lab.config.home.is_dir(), str(lab.config.home),
                 "incident records, reports, logs and the fault journal are kept here")]
    server = lab.monitor.prometheus()
    if server is not None:
        rows.append(_row("Prometheus", True, server.url, "lab.query() and lab.alerts() use the real Prometheus"))
    else:
        installed = shutil.which("prometheus") is not None
        rows.append(_row("Prometheus", installed, "installed, not running" if installed else "not installed",
                         "start it with lab.monitor.start_prometheus()" if installed
                         else "optional: lab.alerts() evaluates the same rules on the embedded scraper"))
    rows.append(_row("Docker engine", *_docker()))
    rows.append(_row("Kubernetes cluster", *_cluster(lab)))
    return rows


def _cluster(lab: "Lab") -> tuple[bool, str, str]:
    """Return (ok, observed, meaning) for the provider's cluster: a named real context, or the embedded one."""
    from ..localnet.services import is_ready

    if lab.config.kube_context:
        # A real cluster is not contacted here; lab.cluster connects on first use.
        return (True, f"context {lab.config.kube_context}",
                "lab.cluster uses this real cluster, only in the lab's namespaces")
    service = next((s for s in lab.status()["services"] if s.get("kind") == "cluster"), None)
    if service is None:
        return (False, "not part of this localnet",
                "the provider exercise needs it: recreate the lab with a current incidentlab")
    ready = is_ready(lab.backend.network().service(service["name"]), service.get("pid", 0))
    if not ready:
        return False, service["api"], f"the embedded cluster is {service['status']}: start it with lab.start()"
    return True, service["api"], "lab.cluster and kubectl --kubeconfig HOME/kubeconfig reach the embedded cluster"


def _docker() -> tuple[bool, str, str]:
    try:
        import docker

        client = docker.from_env(timeout=3)
        version = client.version().get("Version", "?")
        client.close()
    except Exception as exc:  # no SDK, no socket, no permission: all mean "not available here"
        reason = str(exc).splitlines()[0][:80]
        return False, f"not reachable ({reason})", "optional: the local backend runs the same exercises"
    return True, f"engine {version}", "the docker backend can run the localnet as containers"


def _answers(url: str, timeout: float) -> bool:
    try:
        return requests.get(url, timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def _row(check: str, ok: bool, observed: str, meaning: str) -> dict:
    return {"check": check, "ok": bool(ok), "observed": observed, "meaning": meaning}

"""Per-kind facts about the localnet's processes: command line, readiness check, status entry, ports.

Validators, the API gateway and the client load are started, checked and reported the same way
by the supervisor (local processes) and the Docker backend (containers). Standard library only.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import sys
import urllib.parse
import urllib.request

from .network import ServiceSpec, ValidatorSpec

__all__ = [
    "MODULES", "LOCAL_ONLY_KINDS", "kind_of", "service_command", "ready_url", "ready_check_text", "is_ready",
    "handles_sigterm", "status_entry", "ports_column", "endpoint_text", "cluster_certificate",
]

#: The module that ``python -m`` runs for each kind of service.
MODULES = {
    "validator": "incidentlab.localnet.validator",
    "gateway": "incidentlab.localnet.gateway",
    "client": "incidentlab.localnet.client",
    "veid": "incidentlab.localnet.veid_service",
    "cluster": "incidentlab.localnet.cluster",
}
#: Kinds that need the package's dependencies (numpy, Pillow), so they run on the local backend only.
LOCAL_ONLY_KINDS = ("veid",)
#: Order of the port kinds in the PORTS column of targets().
PORT_ORDER = ("rest", "rpc", "api", "metrics", "p2p")
READY_REQUEST_TIMEOUT = 0.5


def kind_of(spec: ValidatorSpec | ServiceSpec) -> str:
    """Return the kind of a spec: "validator", "gateway", "client", "veid" or "cluster"."""
    return getattr(spec, "kind", "validator")


def service_command(spec: ValidatorSpec | ServiceSpec, network_path: str | os.PathLike, python: str | None = None) -> list[str]:
    """Return the command line that runs ``spec``: ``python -m MODULE --network FILE --name NAME``.

    ``python`` is the interpreter (the running one when None). Raises ValueError for an
    unknown kind, which a network file written by a newer incidentlab may contain.
    """
    kind = kind_of(spec)
    if kind not in MODULES:
        raise ValueError(f"service {spec.name!r} has kind {kind!r}, which this incidentlab cannot run; "
                         f"known kinds: {', '.join(MODULES)}")
    return [python or sys.executable, "-m", MODULES[kind], "--network", str(network_path), "--name", spec.name]


def ready_url(spec: ValidatorSpec | ServiceSpec) -> str | None:
    """Return the URL that responds once ``spec`` is ready, or None for a service without a port.

    A validator is ready when its RPC responds to GET /health. The gateway is ready when its
    /metrics responds, because it binds its REST port before its metrics port. The cluster is
    ready when its API server responds to GET /readyz.
    """
    if kind_of(spec) == "validator":
        return f"{spec.rpc_url}/health"
    if kind_of(spec) == "cluster":
        scheme = "https" if cluster_certificate(spec) else "http"
        return f"{scheme}://127.0.0.1:{spec.ports['api']}/readyz"
    if "metrics" in spec.ports:
        return f"http://127.0.0.1:{spec.ports['metrics']}/metrics"
    return None


def ready_check_text(spec: ValidatorSpec | ServiceSpec) -> str:
    """Return " (ready check: GET URL on port N)" for error messages, or "" for a service without a port."""
    url = ready_url(spec)
    if url is None:
        return ""
    return f" (ready check: GET {url} on port {urllib.parse.urlsplit(url).port})"


def is_ready(spec: ValidatorSpec | ServiceSpec, pid: int = 0) -> bool:
    """Return True when ``spec``'s ready_url() returns HTTP 200 (a validator's with a JSON-RPC result).

    A service without a ready URL (the client) is ready once its process ``pid``, as the host
    sees it, handles SIGTERM: its main loop starts right after, and a stop before that would
    hang, because a container's PID 1 ignores signals that it has no handler for.
    """
    url = ready_url(spec)
    if url is None:
        return handles_sigterm(pid)
    # No proxy: the request must reach the service on loopback, even when http_proxy is set.
    handlers = [urllib.request.ProxyHandler({})]
    if url.startswith("https:"):
        # The cluster's self-signed certificate is the only trusted one for its API server.
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=cluster_certificate(spec))))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=READY_REQUEST_TIMEOUT) as response:
            body = response.read()
            if kind_of(spec) == "validator":
                return response.status == 200 and "result" in json.loads(body)
            return response.status == 200
    except (OSError, ValueError, TypeError):
        return False


def cluster_certificate(spec: ValidatorSpec | ServiceSpec) -> str | None:
    """Return the path of the cluster's serving certificate once its API server has created one, else None."""
    path = os.path.join(getattr(spec, "home", ""), "tls.crt")
    return path if kind_of(spec) == "cluster" and os.path.exists(path) else None


def handles_sigterm(pid: int) -> bool:
    """Return True when process ``pid`` has a handler for SIGTERM: bit 15 of SigCgt in /proc/PID/status (Linux)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except (OSError, ValueError, IndexError):
        return False
    return False


def status_entry(spec: ValidatorSpec | ServiceSpec, *, status: str, pid: int, started_at: str,
                 finished_at: str, exit_code: int) -> dict:
    """Return the entry of ``spec`` in services(), shaped for `incidentlab lab status --json`.

    A validator has ``rpc``, ``metrics`` and ``p2p`` URLs, the gateway and the VEID service ``rest``
    and ``metrics``, the cluster ``api`` and the client no URL. Every entry has name, kind, status,
    pid, started_at, finished_at and
    exit_code.
    """
    kind = kind_of(spec)
    entry = {"name": spec.name, "kind": kind, "status": status, "pid": pid}
    if kind == "validator":
        entry.update(rpc=spec.rpc_url, metrics=spec.metrics_url, p2p=spec.p2p_url)
    elif kind in ("gateway", "veid"):
        entry.update(rest=f"http://127.0.0.1:{spec.ports['rest']}",
                     metrics=f"http://127.0.0.1:{spec.ports['metrics']}/metrics")
    elif kind == "cluster":
        scheme = "https" if cluster_certificate(spec) else "http"
        entry.update(api=f"{scheme}://127.0.0.1:{spec.ports['api']}")
    entry.update(started_at=started_at, finished_at=finished_at, exit_code=exit_code)
    return entry


def ports_column(spec: ValidatorSpec | ServiceSpec) -> str:
    """Return the PORTS column of targets() for ``spec``, like "127.0.0.1:26657->rpc, ..."."""
    kinds = [kind for kind in PORT_ORDER if kind in spec.ports]
    return ", ".join(f"127.0.0.1:{spec.ports[kind]}->{kind}" for kind in kinds)


def endpoint_text(spec: ValidatorSpec | ServiceSpec) -> str:
    """Return the main endpoint of ``spec`` for log lines: "rpc=URL", "rest=URL", "api=URL" or "no ports"."""
    for kind in ("rpc", "rest", "api"):
        if kind in spec.ports:
            return f"{kind}=http://127.0.0.1:{spec.ports[kind]}"
    return "no ports"

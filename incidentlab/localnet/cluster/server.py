"""The cluster's API server: Kubernetes REST paths, discovery, bearer-token auth and Status errors.

Serves on 127.0.0.1 only. Every response follows the real API server's shapes, so the official
``kubernetes`` Python client and ``kubectl`` read it unchanged.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
import shutil
import ssl
import subprocess
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from ..gateway import watch_network_file
from ..httpserver import ServiceHTTPServer
from ..servicemain import configure_logging, service_parser, stop_on_signals
from ..network import load_network
from . import resources as discovery
from .admission import Forbidden
from .controllers import Cluster, NotFound
from .objects import Invalid
from .query import merge_patch, scale_of, select
from .store import Conflict, Store
from .tables import table

__all__ = ["main", "ApiServer", "TOKEN_FILE", "CERT_FILE", "bootstrap", "ensure_certificate"]

# Run with -m, __name__ is "__main__": name the logger after the module instead.
logger = logging.getLogger("incidentlab.localnet.cluster.server")

TOKEN_FILE = "token"
#: The API server's self-signed serving certificate and key, created on the first start.
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
JSON_TYPE = "application/json"
#: Node defaults of the embedded cluster: three workers, each with this allocatable capacity.
DEFAULT_NODES = 3
DEFAULT_NODE_CPU = "4"
DEFAULT_NODE_MEMORY = "8Gi"
DEFAULT_NODE_PODS = "110"
#: Namespaces that every cluster has from the start.
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_PATH = re.compile(r"^/(?:api|apis/(?P<group>apps))/v1"
                   r"(?:/namespaces/(?P<ns>[^/]+)(?=/))?/(?P<resource>[a-z]+)"
                   r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>status|scale))?$")
NOT_ALLOWED = "the server does not allow this method on the requested resource"


class ApiServer:
    """Request handling over one Cluster: route, authenticate, read or write, and format the response.

    Takes the cluster, the bearer token that every request but the health checks must carry, and
    the server's address for discovery.
    """

    def __init__(self, cluster: Cluster, token: str, address: str):
        self.cluster = cluster
        self.store = cluster.store
        self._token = token
        self.address = address

    def handle(self, method: str, target: str, headers, body: bytes) -> tuple[int, dict | str]:
        """Handle one request; return (HTTP status, JSON object or plain text)."""
        url = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(url.query))
        path = url.path.rstrip("/") or "/"
        if path in ("/healthz", "/readyz", "/livez"):
            return 200, "ok"
        if not self._authorized(headers.get("Authorization", "")):
            return 401, _status(401, "Unauthorized", "Unauthorized")
        static = {"/version": discovery.SERVER_VERSION, "/api": discovery.api_versions(self.address),
                  "/apis": discovery.api_group_list(), "/api/v1": discovery.resource_list(""),
                  "/apis/apps/v1": discovery.resource_list("apps")}
        if path in static:
            return (200, static[path]) if method == "GET" else (405, _status(405, "MethodNotAllowed", NOT_ALLOWED))
        if body and "json" not in headers.get("Content-Type", "json"):
            # kubectl sends protobuf first; a 415 makes client-go retry the request as JSON.
            return 415, _status(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                                "accepted media types include: application/json, application/merge-patch+json")
        match = _PATH.match(path)
        resource = discovery.find(match.group("group") or "", match.group("resource")) if match else None
        if resource is None:
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        try:
            return self._dispatch(method, resource, match, query, headers, body)
        except NotFound as exc:
            # The API server names a resource of a named group with its group: deployments.apps.
            group = next((r.group for r in discovery.RESOURCES if r.name == exc.resource), "")
            qualified = f"{exc.resource}.{group}" if group else exc.resource
            details = {"name": exc.name, **({"group": group} if group else {}), "kind": exc.resource}
            return 404, _status(404, "NotFound", f'{qualified} "{exc.name}" not found', details)
        except Forbidden as exc:
            # The reference body of a quota rejection names only the kind in its details.
            return 403, _status(403, "Forbidden", exc.message, {"kind": exc.resource})
        except Conflict as exc:
            reason = "AlreadyExists" if "already exists" in str(exc) else "Conflict"
            return 409, _status(409, reason, str(exc), {"kind": resource.name})
        except Invalid as exc:
            return 422, _status(422, "Invalid", str(exc), {"kind": resource.kind})
        except (ValueError, KeyError, TypeError) as exc:
            return 400, _status(400, "BadRequest", f"the request body is invalid: {exc}")

    def _dispatch(self, method, resource, match, query, headers, body) -> tuple[int, dict]:
        namespace, name, sub = match.group("ns"), match.group("name"), match.group("sub")
        if resource.namespaced and name and not namespace:
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        if method == "GET" and name is None:
            if query.get("watch") in ("true", "1"):
                message = "watch is not supported by the embedded cluster; poll with list"
                return 405, _status(405, "MethodNotAllowed", message)
            items = select(self.store.list(resource.name, namespace if resource.namespaced else None), query)
            if "as=Table" in headers.get("Accept", ""):
                return 200, table(resource.name, items, self.store.version)
            return 200, {"kind": f"{resource.kind}List", "apiVersion": _api_version(resource),
                         "metadata": {"resourceVersion": self.store.version}, "items": items}
        if method == "POST" and name is None:
            obj = _body(body, resource, namespace)
            return 201, self.cluster.create(resource.name, obj)
        if name is None:
            return 405, _status(405, "MethodNotAllowed", NOT_ALLOWED)
        current = self.store.get(resource.name, namespace or "", name)
        if current is None:
            raise NotFound(resource.name if not sub else resource.name, name)
        if sub == "scale":
            return self._scale(method, current, headers, body)
        if method == "GET":
            if "as=Table" in headers.get("Accept", ""):
                return 200, table(resource.name, [current], self.store.version)
            return 200, current
        if method == "PUT":
            return 200, self.cluster.replace(resource.name, _body(body, resource, namespace))
        if method == "PATCH":
            return 200, self.cluster.replace(resource.name, merge_patch(current, json.loads(body or b"{}"), headers))
        if method == "DELETE":
            removed = self.cluster.delete(resource.name, namespace or "", name)
            # As the official client expects: the deleted object for these, a Status for the others.
            if resource.name in ("pods", "resourcequotas", "nodes"):
                return 200, removed
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                         "details": {"name": name, "group": resource.group, "kind": resource.name,
                                     "uid": removed["metadata"]["uid"]}}
        return 405, _status(405, "MethodNotAllowed", NOT_ALLOWED)

    def _scale(self, method: str, deployment: dict, headers, body: bytes) -> tuple[int, dict]:
        if method in ("PUT", "PATCH"):
            scale = json.loads(body or b"{}")
            if method == "PATCH":
                scale = merge_patch(scale_of(deployment), scale, headers)
            deployment["spec"]["replicas"] = int(scale["spec"]["replicas"])
            deployment = self.cluster.replace("deployments", deployment)
        return 200, scale_of(deployment)

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._token.encode())


def bootstrap(store: Store, options: dict) -> None:
    """Create the system namespaces and the nodes when the store is new (a first start)."""
    if store.list("nodes"):
        return
    from .store import now_text

    for name in SYSTEM_NAMESPACES:
        store.create("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
                                    "status": {"phase": "Active"}})
    capacity = {"cpu": str(options.get("node_cpu", DEFAULT_NODE_CPU)),
                "memory": str(options.get("node_memory", DEFAULT_NODE_MEMORY)),
                "pods": str(options.get("node_pods", DEFAULT_NODE_PODS))}
    for index in range(int(options.get("nodes", DEFAULT_NODES))):
        name = f"virtengine-worker-{index}"
        store.create("nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
            "spec": {},
            "status": {"capacity": dict(capacity), "allocatable": dict(capacity),
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "message": "kubelet is posting ready status", "lastHeartbeatTime": now_text(),
                                       "lastTransitionTime": now_text()}],
                       "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                                     {"type": "Hostname", "address": name}],
                       "nodeInfo": _node_info(name)},
        })
    store.save_if_changed()


def _node_info(name: str) -> dict:
    """Return a node's status.nodeInfo; the Python client requires every one of these fields."""
    machine = uuid.uuid5(uuid.NAMESPACE_DNS, name).hex
    return {"architecture": "amd64", "bootID": machine, "containerRuntimeVersion": "containerd://1.7.0",
            "kernelVersion": os.uname().release, "kubeProxyVersion": "", "machineID": machine,
            "kubeletVersion": discovery.SERVER_VERSION["gitVersion"], "operatingSystem": "linux",
            "osImage": "incidentlab embedded node", "systemUUID": str(uuid.UUID(machine))}


def ensure_certificate(home: Path) -> tuple[Path, Path] | None:
    """Return the serving certificate and key under ``home``, creating them with ``openssl`` when missing.

    kubectl sends a kubeconfig's token only over TLS (client-go drops credentials for an http://
    server), so the API server serves HTTPS whenever it can. Returns None, and the server falls
    back to plain HTTP, when the openssl command is not installed or fails.
    """
    cert, key = home / CERT_FILE, home / KEY_FILE
    if cert.exists() and key.exists():
        return cert, key
    openssl = shutil.which("openssl")
    if openssl is None:
        logger.warning("openssl is not installed: serving plain HTTP, so kubectl will not send the token")
        return None
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
               "-subj", "/CN=virtengine-cluster", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
               "-days", "3650", "-keyout", str(key) + ".tmp", "-out", str(cert) + ".tmp"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        logger.warning("openssl could not create a certificate (exit %d: %s); serving plain HTTP",
                       result.returncode, result.stderr.strip()[-300:])
        return None
    os.chmod(str(key) + ".tmp", 0o600)
    os.replace(str(key) + ".tmp", key)
    os.replace(str(cert) + ".tmp", cert)
    return cert, key


def read_or_create_token(home: Path) -> str:
    """Return the bearer token in ``home/token``, creating it (mode 0600) on the first start."""
    path = home / TOKEN_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token


def main(argv: list[str] | None = None) -> int:
    """Run the cluster named ``--name`` of the network file ``--network`` until SIGTERM or SIGINT."""
    parser = service_parser("incidentlab.localnet.cluster", __doc__, "virtengine-cluster")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    network = load_network(args.network)
    try:
        spec = network.service(args.name)
    except KeyError:
        parser.error(f"no service named {args.name!r} in {args.network}; known services: "
                     f"{', '.join(s.name for s in network.services) or 'none'}")
    if spec.kind != "cluster":
        parser.error(f"service {args.name!r} in {args.network} has kind {spec.kind!r}, not 'cluster'")
    stopped = threading.Event()
    stop_on_signals(stopped, "cluster", spec.name)
    return _serve(spec, network.time_scale, args.network, stopped)


def _serve(spec, time_scale: float, network_path: str, stopped: threading.Event) -> int:
    home = Path(spec.home)
    store = Store(home)
    bootstrap(store, spec.options)
    interval = max(0.05, min(1.0, float(spec.options.get("sync_interval", 1.0)) * time_scale))
    cluster = Cluster(store, interval=interval, seed=int(spec.options.get("seed", 0)))
    port = spec.ports["api"]
    try:
        server = _Server(("127.0.0.1", port), _Handler)
    except OSError as exc:
        logger.error("cannot listen on 127.0.0.1:%d for %s: %s; another process may hold the port", port, spec.name, exc)
        return 1
    certificate = ensure_certificate(home)
    scheme = "http"
    if certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*certificate)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    server.api = ApiServer(cluster, read_or_create_token(home), f"127.0.0.1:{port}")
    threading.Thread(target=cluster.run, args=(stopped,), name="controllers", daemon=True).start()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="api-server", daemon=True).start()
    watch_network_file(network_path, stopped, spec.name)
    logger.info("starting cluster=%s api=%s://127.0.0.1:%d controller_interval=%.2fs", spec.name, scheme, port, interval)
    stopped.wait()
    server.shutdown()
    server.server_close()
    store.save_if_changed()
    logger.info("stopped cluster=%s", spec.name)
    return 0


class _Server(ServiceHTTPServer):
    api: ApiServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 60.0
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        logger.debug("%s %s", self.address_string(), format % args)

    def _respond(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = self.server.api.handle(self.command, self.path, self.headers, body)
        if isinstance(payload, str):
            data, content_type = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(payload).encode(), JSON_TYPE
        if status >= 400:
            logger.info("%s %s -> %d %s", self.command, urllib.parse.urlsplit(self.path).path, status,
                        payload.get("message", "") if isinstance(payload, dict) else payload)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _respond


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
              "reason": reason}
    if details:
        status["details"] = details
    status["code"] = code
    return status


def _api_version(resource) -> str:
    return f"{resource.group}/v1" if resource.group else "v1"


def _body(body: bytes, resource, namespace: str | None) -> dict:
    obj = json.loads(body or b"{}")
    if not isinstance(obj, dict):
        raise ValueError("the body must be a JSON object")
    obj.setdefault("apiVersion", _api_version(resource))
    obj.setdefault("kind", resource.kind)
    meta = obj.setdefault("metadata", {})
    if resource.namespaced:
        if meta.get("namespace") and namespace and meta["namespace"] != namespace:
            raise Invalid(f"the namespace of the provided object ({meta['namespace']}) does not match the "
                          f"namespace sent on the request ({namespace})")
        meta["namespace"] = namespace
    return obj


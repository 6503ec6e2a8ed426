"""The localnet's network file: chain id, timeouts, validator identities, other services and ports.

The supervisor writes it once when the localnet is created. Every validator, gateway and client
process reads it at start, so a restarted process keeps its ports, keys and data folder.
Standard library only.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import hashlib
import hmac
import json
import random
import socket
from pathlib import Path

from . import portclaims

__all__ = [
    "Timeouts",
    "ValidatorSpec",
    "ServiceSpec",
    "Network",
    "create_network",
    "load_network",
    "sign",
    "CLASSIC_PORTS",
    "GATEWAY_NAME",
    "CLIENT_NAME",
    "CLUSTER_NAME",
    "VEID_NAME",
    "DEFAULT_UPSTREAM_TIMEOUT",
    "DEFAULT_CLIENT_RATE",
    "DEFAULT_CLIENT_CONCURRENCY",
]

#: CometBFT's well-known ports for the first node.
CLASSIC_PORTS = {"p2p": 26656, "rpc": 26657, "metrics": 26660}
#: The Cosmos SDK's well-known REST port, asked for by the API gateway.
CLASSIC_REST_PORT = 1317
GATEWAY_NAME = "virtengine-gateway"
CLIENT_NAME = "virtengine-client"
#: The provider's Kubernetes cluster, served by incidentlab.localnet.cluster.
CLUSTER_NAME = "virtengine-cluster"
VEID_NAME = "virtengine-veid"
#: Verification requests per second of the VEID service's background stream, before time scaling.
DEFAULT_VEID_RATE = 1.0
#: Upstream timeout of the gateway in seconds, before time scaling.
DEFAULT_UPSTREAM_TIMEOUT = 2.0
#: Requests per second that the client sends to the gateway.
DEFAULT_CLIENT_RATE = 5.0
#: Requests of the client in flight at once; beyond that a request is dropped, not queued.
DEFAULT_CLIENT_CONCURRENCY = 4
#: Voting power of each localnet validator (equal power, as in the design).
DEFAULT_POWER = 10
NETWORK_FILE = "network.json"
#: Lowest port the localnet picks when the classic ports are not used.
PORT_FLOOR = 20000


@dataclasses.dataclass(frozen=True, kw_only=True)
class Timeouts:
    """CometBFT consensus timeouts in seconds, before time scaling.

    The defaults are CometBFT's: propose 3 s, prevote and precommit 1 s, each plus 0.5 s
    per round beyond 0, and commit 1 s.
    """

    propose: float = 3.0
    propose_delta: float = 0.5
    prevote: float = 1.0
    prevote_delta: float = 0.5
    precommit: float = 1.0
    precommit_delta: float = 0.5
    commit: float = 1.0

    def scaled(self, time_scale: float) -> "Timeouts":
        """Return the timeouts multiplied by ``time_scale``."""
        return Timeouts(**{f.name: getattr(self, f.name) * time_scale for f in dataclasses.fields(self)})

    def propose_for(self, round_: int) -> float:
        return self.propose + self.propose_delta * round_

    def prevote_for(self, round_: int) -> float:
        return self.prevote + self.prevote_delta * round_

    def precommit_for(self, round_: int) -> float:
        return self.precommit + self.precommit_delta * round_


@dataclasses.dataclass(frozen=True, kw_only=True)
class ValidatorSpec:
    """Identity and endpoints of one validator."""

    index: int
    name: str
    node_id: str
    address: str
    pub_key: str
    secret: str
    power: int
    ports: dict
    home: str

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['rpc']}"

    @property
    def p2p_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['p2p']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServiceSpec:
    """A localnet service that is not a validator: the API gateway, the client load, the VEID service or the cluster.

    ``kind`` is "gateway", "client", "veid" or "cluster". ``ports`` maps a port kind ("rest", "metrics") to its
    number on 127.0.0.1 and is empty for a service that listens on none. ``options`` contains the
    kind's settings, such as the gateway's upstream validator or the client's request rate.
    """

    name: str
    kind: str
    ports: dict
    home: str
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Network:
    """The whole localnet as every process reads it from the network file: chain, validators and other services."""

    chain_id: str
    time_scale: float
    timeouts: Timeouts
    genesis_time: str
    validators: tuple
    services: tuple = ()
    path: str = ""

    @property
    def total_power(self) -> int:
        return sum(v.power for v in self.validators)

    @property
    def specs(self) -> tuple:
        """Every process of the localnet: the validators, then the other services, in start order."""
        return tuple(self.validators) + tuple(self.services)

    def ports(self) -> list[int]:
        """Return every port number of the localnet, validators' and services' alike."""
        return [port for spec in self.specs for port in spec.ports.values()]

    def validator(self, name: str) -> ValidatorSpec:
        for spec in self.validators:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def service(self, name: str) -> ServiceSpec:
        """Return the non-validator service ``name``; raise KeyError when there is none."""
        for spec in self.services:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_json(self) -> dict:
        return {
            "chain_id": self.chain_id,
            "time_scale": self.time_scale,
            "timeouts": dataclasses.asdict(self.timeouts),
            "genesis_time": self.genesis_time,
            "validators": [dataclasses.asdict(v) for v in self.validators],
            "services": [dataclasses.asdict(s) for s in self.services],
        }


def create_network(
    directory: Path,
    *,
    chain_id: str,
    validators: int,
    time_scale: float,
    seed: int = 0,
    classic_ports: bool = True,
    name_prefix: str = "virtengine-node-",
    with_services: bool = True,
) -> Network:
    """Create the identities and ports of a new localnet and write ``network.json``.

    Keys derive from ``seed`` so that the same seed gives the same addresses. Ports are
    free ports on 127.0.0.1 at the time of the call that no other lab of this user has claimed
    (see portclaims), and they are claimed for this one; the first validator gets the classic
    CometBFT ports when ``classic_ports`` is true and they are free. With ``with_services``
    the localnet also gets the API gateway in front of the first validator (REST on the classic
    port 1317 under the same rule), a client load seeded with ``seed`` and the VEID scoring service.
    """
    directory = Path(directory)
    owner = directory / NETWORK_FILE
    blocked = portclaims.claimed_ports(owner)
    for _attempt in range(3):
        network = _build_network(directory, chain_id=chain_id, validators=validators, time_scale=time_scale, seed=seed,
                                 classic_ports=classic_ports, name_prefix=name_prefix, with_services=with_services,
                                 taken=set(blocked))
        lost = portclaims.claim(network.ports(), owner)
        if not lost:
            break
        # Another lab claimed a port in the moment between our check and our claim: pick again.
        portclaims.release(network.ports(), owner)
        blocked.update(lost)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (NETWORK_FILE + ".tmp")
    tmp.write_text(json.dumps(network.to_json(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(owner)
    return network


def _build_network(directory: Path, *, chain_id: str, validators: int, time_scale: float, seed: int,
                   classic_ports: bool, name_prefix: str, with_services: bool, taken: set[int]) -> "Network":
    """Return a new Network whose ports avoid ``taken`` (which gains every port picked)."""
    rng = random.Random(f"{chain_id}:{seed}")
    specs = []
    for index in range(validators):
        secret = bytes(rng.getrandbits(8) for _ in range(32))
        pub_key = hashlib.sha256(b"pub:" + secret).digest()
        # CometBFT derives the validator address from the first 20 bytes of SHA-256 of the public key.
        address = hashlib.sha256(pub_key).hexdigest()[:40].upper()
        node_id = hashlib.sha256(b"node:" + secret).hexdigest()[:40]
        name = f"{name_prefix}{index}"
        wanted = CLASSIC_PORTS if (classic_ports and index == 0) else {}
        ports = {kind: _pick_port(wanted.get(kind), taken) for kind in ("p2p", "rpc", "metrics")}
        specs.append(
            ValidatorSpec(
                index=index,
                name=name,
                node_id=node_id,
                address=address,
                pub_key=base64.b64encode(pub_key).decode(),
                secret=secret.hex(),
                power=DEFAULT_POWER,
                ports=ports,
                home=str(directory / name),
            )
        )
    services = _service_specs(directory, specs[0].name, seed, classic_ports, taken) if with_services and specs else ()
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return Network(
        chain_id=chain_id,
        time_scale=time_scale,
        timeouts=Timeouts(),
        genesis_time=now,
        validators=tuple(specs),
        services=services,
        path=str(directory / NETWORK_FILE),
    )


def load_network(path: str | Path) -> Network:
    """Read a network file written by create_network.

    A file written before the localnet had other services has no ``services`` list and
    loads with none.
    """
    path = Path(path)
    if path.is_dir():
        path = path / NETWORK_FILE
    raw = json.loads(path.read_text(encoding="utf-8"))
    return Network(
        chain_id=raw["chain_id"],
        time_scale=float(raw["time_scale"]),
        timeouts=Timeouts(**raw["timeouts"]),
        genesis_time=raw["genesis_time"],
        validators=tuple(ValidatorSpec(**v) for v in raw["validators"]),
        services=tuple(ServiceSpec(**s) for s in raw.get("services", [])),
        path=str(path),
    )


def sign(secret_hex: str, payload: bytes) -> str:
    """Return a base64 64-byte signature of ``payload`` with a validator's secret.

    NOTE: the localnet signs with HMAC-SHA512, not Ed25519, because the standard library
    has no Ed25519. The encoding and length match CometBFT's signatures; the algorithm does not.
    """
    digest = hmac.new(bytes.fromhex(secret_hex), payload, hashlib.sha512).digest()
    return base64.b64encode(digest).decode()


def _service_specs(directory: Path, upstream: str, seed: int, classic_ports: bool, taken: set[int]) -> tuple:
    rest = _pick_port(CLASSIC_REST_PORT if classic_ports else None, taken)
    gateway = ServiceSpec(
        name=GATEWAY_NAME,
        kind="gateway",
        ports={"rest": rest, "metrics": _pick_port(None, taken)},
        home=str(directory / GATEWAY_NAME),
        options={"upstream": upstream, "upstream_timeout": DEFAULT_UPSTREAM_TIMEOUT},
    )
    client = ServiceSpec(
        name=CLIENT_NAME,
        kind="client",
        ports={},
        home=str(directory / CLIENT_NAME),
        options={"gateway": GATEWAY_NAME, "rate": DEFAULT_CLIENT_RATE, "seed": seed,
                 "concurrency": DEFAULT_CLIENT_CONCURRENCY},
    )
    # The VEID scoring service runs on the local backend only, because it needs numpy and Pillow.
    veid = ServiceSpec(
        name=VEID_NAME,
        kind="veid",
        ports={"rest": _pick_port(None, taken), "metrics": _pick_port(None, taken)},
        home=str(directory / VEID_NAME),
        options={"rate": DEFAULT_VEID_RATE, "seed": seed},
    )
    cluster = ServiceSpec(
        name=CLUSTER_NAME,
        kind="cluster",
        ports={"api": _pick_port(None, taken)},
        home=str(directory / CLUSTER_NAME),
        options={"seed": seed},
    )
    return gateway, client, veid, cluster


def _pick_port(wanted: int | None, taken: set[int]) -> int:
    if wanted and wanted not in taken and port_is_free(wanted):
        taken.add(wanted)
        return wanted
    # Ports come from below the kernel's ephemeral range: a port inside it can be held by some
    # client's outgoing connection (or its TIME_WAIT) while a stopped validator waits to restart.
    low, high = _ephemeral_range()
    candidates = random.Random().sample(range(PORT_FLOOR, max(PORT_FLOOR + 1000, low)), 200)
    for port in candidates:
        if port not in taken and not low <= port <= high and port_is_free(port):
            taken.add(port)
            return port
    raise OSError(f"could not find a free TCP port on 127.0.0.1 between {PORT_FLOOR} and {low} after 200 attempts")


def _ephemeral_range() -> tuple[int, int]:
    """Return the kernel's range of ports for outgoing connections (Linux default 32768-60999)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="utf-8") as handle:
            low, high = (int(part) for part in handle.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return low, high


def port_is_free(port: int) -> bool:
    """Return True when a listener could bind ``port`` on 127.0.0.1 (with SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True

"""Lab configuration: backend, lab home, localnet size, ports and time scale."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from .errors import ConfigError

__all__ = ["LabConfig", "default_home", "classic_ports_allowed", "BACKENDS"]

BACKENDS = ("auto", "local", "docker", "kubernetes")

#: Environment variable that sets the lab home.
HOME_ENV = "INCIDENTLAB_HOME"
#: Environment variable that, set to 0, makes every new lab pick free ports instead of the classic ones.
CLASSIC_PORTS_ENV = "INCIDENTLAB_CLASSIC_PORTS"
#: Environment variables naming a real cluster's kubeconfig context and the namespaces the lab may use there.
KUBE_CONTEXT_ENV = "INCIDENTLAB_KUBE_CONTEXT"
KUBE_NAMESPACES_ENV = "INCIDENTLAB_KUBE_NAMESPACES"
DEFAULT_HOME = "~/incident-lab"
DEFAULT_VALIDATORS = 4
DEFAULT_CHAIN_ID = "virtengine-localnet-1"
#: Lab home sub-folders that the curriculum's incident directory layout expects.
HOME_FOLDERS = ("logs", "evidence", "postmortems")
MIN_TIME_SCALE = 0.01
MAX_TIME_SCALE = 10.0


def default_home() -> Path:
    """Return the lab home: ``$INCIDENTLAB_HOME`` when set, else ``~/incident-lab``."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser()


def classic_ports_allowed() -> bool:
    """Return False when ``$INCIDENTLAB_CLASSIC_PORTS`` is 0 (batch grading sets it, so parallel labs skip the classic ports)."""
    return os.environ.get(CLASSIC_PORTS_ENV, "1").strip().lower() not in ("0", "false", "no")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabConfig:
    """Settings of one lab.

    ``time_scale`` multiplies every duration of the localnet (block time, consensus
    timeouts, fault cycles): 0.1 runs the lab ten times faster than real CometBFT timing.
    ``classic_ports`` asks for the well-known ports (26656, 26657, 26660) for the first
    validator when they are free; other validators and busy ports get free ones. It defaults
    to True unless ``$INCIDENTLAB_CLASSIC_PORTS`` is 0.
    """

    home: Path = dataclasses.field(default_factory=default_home)
    backend: str = "auto"
    validators: int = DEFAULT_VALIDATORS
    time_scale: float = 1.0
    chain_id: str = DEFAULT_CHAIN_ID
    classic_ports: bool = dataclasses.field(default_factory=classic_ports_allowed)
    kube_context: str | None = dataclasses.field(default_factory=lambda: os.environ.get(KUBE_CONTEXT_ENV) or None)
    kube_namespaces: tuple[str, ...] = dataclasses.field(
        default_factory=lambda: tuple(n.strip() for n in os.environ.get(KUBE_NAMESPACES_ENV, "").split(",") if n.strip()))

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).expanduser().resolve())
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        if not isinstance(self.validators, int) or not 1 <= self.validators <= 16:
            raise ConfigError(
                f"validators={self.validators!r} is out of range; use a whole number from 1 to 16 "
                f"(the default is {DEFAULT_VALIDATORS})"
            )
        try:
            scale = float(self.time_scale)
        except (TypeError, ValueError):
            scale = float("nan")
        if not MIN_TIME_SCALE <= scale <= MAX_TIME_SCALE:
            raise ConfigError(
                f"time_scale={self.time_scale!r} is out of range; use a number from "
                f"{MIN_TIME_SCALE} to {MAX_TIME_SCALE} (1.0 is real CometBFT timing, 0.1 is ten times faster)"
            )
        object.__setattr__(self, "time_scale", scale)
        if self.kube_context is not None and (not isinstance(self.kube_context, str) or not self.kube_context.strip()):
            raise ConfigError(f"kube_context={self.kube_context!r} is invalid; name a context of your kubeconfig "
                              "(`kubectl config get-contexts`) or leave it None for the embedded cluster")
        object.__setattr__(self, "kube_namespaces", tuple(self.kube_namespaces))
        if not self.chain_id or any(c.isspace() for c in self.chain_id):
            raise ConfigError(f"chain_id={self.chain_id!r} is invalid; use a non-empty id without spaces")

    @property
    def localnet_dir(self) -> Path:
        """Folder of the embedded localnet: network file, node data and process state."""
        return self.home / "localnet"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    def ensure_home(self) -> Path:
        """Create the lab home and its standard folders; return the home."""
        for folder in HOME_FOLDERS:
            try:
                (self.home / folder).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"lab home {str(self.home)!r} cannot be used: creating {folder}/ in it failed ({exc.strerror}); "
                    f"give a folder you can write with --home or {HOME_ENV}"
                ) from exc
        return self.home

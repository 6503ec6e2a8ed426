"""Exceptions raised by incidentlab.

Every error derives from IncidentLabError, so a notebook or script can catch them all.
Subclasses keep the values involved (target, observed value) as attributes, and each
message says what was observed, what was expected and what to do next.
"""

from __future__ import annotations

__all__ = [
    "IncidentLabError",
    "ConfigError",
    "LocalnetError",
    "TargetNotFound",
    "TargetStateError",
    "ProbeError",
    "RPCConnectionRefused",
    "RPCTimeout",
    "RPCHTTPError",
    "RPCError",
    "FaultError",
    "ScenarioError",
    "AnswerFileError",
    "RecordError",
    "VeidError",
    "ModelIntegrityError",
]


class IncidentLabError(Exception):
    """Base class of every error that incidentlab raises on purpose."""


class ConfigError(IncidentLabError, ValueError):
    """A configuration value is invalid: the message names the value and the valid range."""


class LocalnetError(IncidentLabError):
    """The embedded localnet could not be started, reached or stopped."""


class TargetNotFound(IncidentLabError, LookupError):
    """No target of this lab has the requested name."""

    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = list(known)
        listed = ", ".join(self.known) or "none"
        super().__init__(
            f"no target named {name!r} in this lab; known targets: {listed}. "
            "Run `incidentlab lab status` to list them."
        )


class TargetStateError(IncidentLabError):
    """An action does not apply to the target's current state (like `docker unpause` on a running container)."""

    def __init__(self, name: str, status: str, message: str):
        self.name = name
        self.status = status
        super().__init__(message)


class ProbeError(IncidentLabError):
    """A probe could not get an answer from its endpoint."""

    def __init__(self, url: str, message: str):
        self.url = url
        super().__init__(message)


class RPCConnectionRefused(ProbeError):
    """The TCP connection was refused: nothing listens on the port (a stopped node)."""


class RPCTimeout(ProbeError):
    """The connection or the read timed out (a frozen or overloaded node)."""

    def __init__(self, url: str, message: str, timeout: float):
        self.timeout = timeout
        super().__init__(url, message)


class RPCHTTPError(ProbeError):
    """The server answered with an HTTP error status and no JSON-RPC error body."""

    def __init__(self, url: str, message: str, status: int, body: str = ""):
        self.status = status
        self.body = body
        super().__init__(url, message)


class RPCError(ProbeError):
    """The server answered with a JSON-RPC 2.0 error object."""

    def __init__(self, url: str, code: int, message: str, data: str = "", status: int = 200):
        self.code = code
        self.rpc_message = message
        self.data = data
        self.status = status
        detail = f": {data}" if data else ""
        super().__init__(url, f"JSON-RPC error {code} ({message}) from {url}{detail}")


class FaultError(IncidentLabError):
    """A fault could not be injected or reverted, or is used wrongly."""


class ScenarioError(IncidentLabError):
    """A scenario or simulation was used wrongly (unknown id, injected twice, not injected)."""


class AnswerFileError(IncidentLabError, ValueError):
    """An answers file is missing, not valid JSON or YAML, or breaks its schema."""

    def __init__(self, path: str, message: str, field: str | None = None):
        self.path = path
        self.field = field
        super().__init__(message)


class RecordError(IncidentLabError):
    """An incident record on disk could not be read or written."""


class VeidError(IncidentLabError):
    """The VEID scoring service or its model could not score a capture, or was used wrongly."""


class ModelIntegrityError(VeidError):
    """A VEID model file's SHA-256 differs from the one its manifest records."""

    def __init__(self, path: str, expected: str, actual: str):
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"model file {path} has sha256 {actual}, but the manifest expects {expected}; the file was changed "
            "or belongs to another version: restore it, or retrain with `python -m incidentlab.veid.train`"
        )

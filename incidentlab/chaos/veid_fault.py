"""The VEID fault: deploy a bad configuration revision of the scoring service; its undo is the rollback.

Variants change the divisor to 1000, swap the channel order, or point at a model file whose
SHA-256 does not match the manifest. The service is reached over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..veid import SERVICE_NAME
from .faults import Fault, register

if TYPE_CHECKING:
    from ..lab import Lab

__all__ = ["VeidBadRevision", "VARIANTS"]

logger = logging.getLogger(__name__)

#: Variant -> (change deployed, commit message of the bad revision). The tampered model's
#: model_file is filled in at injection, once the file exists.
VARIANTS = {
    "divisor-1000": ({"divisor": 1000}, "normalise captures for the new camera SDK's extended range"),
    "channel-order": ({"channel_order": "BGR"}, "decode captures with the OpenCV pipeline"),
    "tampered-model": ({"model_file": None}, "hot-swap scorer weights from the nightly retraining job"),
}
DEFAULT_AUTHOR = "deploy-bot"


@register("veid-bad-revision")
class VeidBadRevision(Fault):
    """Deploy a bad revision of ``virtengine-veid`` (``variant``: divisor-1000, channel-order, tampered-model).

    The revision current at creation is the good one that the undo rolls back to. Raises
    ConfigError for an unknown variant.
    """

    def __init__(self, lab: "Lab", target: str = SERVICE_NAME, *, variant: str = "divisor-1000",
                 author: str = DEFAULT_AUTHOR, **options: Any) -> None:
        super().__init__(lab, target, **options)
        if target != SERVICE_NAME:
            raise ConfigError(f"target {target!r} is not the VEID service; veid-bad-revision deploys to {SERVICE_NAME}")
        if variant not in VARIANTS:
            raise ConfigError(f"variant={variant!r} is unknown for veid-bad-revision; use one of {', '.join(VARIANTS)}")
        self.variant = variant
        self.author = author
        self.url = lab.veid.url
        self.good = lab.veid.current()
        self.revision: dict | None = None

    def params(self) -> dict:
        return {"variant": self.variant, "author": self.author, "good_revision": self.good["id"]}

    def plan(self) -> list[str]:
        change, message = VARIANTS[self.variant]
        return [f"deploy a revision of {self.target} with {change} ({message!r})",
                f"on revert: roll back to {self.good['id']}"]

    def undo_steps(self) -> list[dict]:
        return [{"op": "veid_rollback", "target": self.target, "url": self.url, "to": self.good["id"],
                 "config": self.good["config"]}]

    def apply(self) -> None:
        change, message = VARIANTS[self.variant]
        if self.variant == "tampered-model":
            change = {"model_file": str(self._write_tampered_model())}
        # record=False: the bad deploy is the fault, not a remediation action of the learner.
        self.revision = self.lab.veid.deploy(change, author=self.author, message=message, record=False)
        logger.info("deployed bad revision %s fault=%s target=%s change=%s", self.revision["id"], self.id,
                    self.target, change)

    def _write_tampered_model(self) -> Path:
        """Write a copy of the shipped weights with one bias changed into the service's folder; return its path."""
        from ..veid.model import MODEL_DIR, read_manifest

        manifest = read_manifest()
        weights = json.loads((MODEL_DIR / manifest["file"]).read_text(encoding="utf-8"))
        weights["output_bias"] = weights["output_bias"] - 1.5
        path = Path(self.lab.backend.network().service(self.target).home) / "models" / manifest["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(weights, indent=1) + "\n", encoding="utf-8")
        return path

"""Scenario registry: the simulations a lab can run, by id."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ScenarioError

if TYPE_CHECKING:
    from ..lab import Lab
    from .base import Simulation

__all__ = ["create", "SCENARIOS", "NOTEBOOKS"]

#: Scenario id -> (module, class name).
SCENARIOS = {
    "high-error-rate": ("high_error_rate", "HighErrorRate"),
    "node-down": ("node_down", "NodeDown"),
    "veid-scoring-anomaly": ("veid_scoring_anomaly", "VeidScoringAnomaly"),
    "provider-deployment-failure": ("provider_deployment_failure", "ProviderDeploymentFailure"),
}
#: Scenario id -> notebook file under notebooks/.
NOTEBOOKS = {
    "lab-setup": "00-lab-setup.ipynb",
    "high-error-rate": "01-high-error-rate.ipynb",
    "node-down": "02-node-down.ipynb",
    "veid-scoring-anomaly": "03-veid-scoring-anomaly.ipynb",
    "provider-deployment-failure": "04-provider-deployment-failure.ipynb",
    "debrief": "05-debrief-postmortem.ipynb",
}


def create(scenario: str, lab: "Lab", **options) -> "Simulation":
    """Return a new simulation of ``scenario`` in ``lab``; raises ScenarioError for an unknown id."""
    import importlib

    if scenario not in SCENARIOS:
        raise ScenarioError(f"unknown scenario {scenario!r}; known scenarios: {', '.join(sorted(SCENARIOS))}")
    module_name, class_name = SCENARIOS[scenario]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)(lab, **options)

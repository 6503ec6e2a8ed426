"""Monitoring of one lab: a real Prometheus where installed, else the embedded scraper and alerts.

Both load the same alert rules from data/alerts, time-scaled like the rest of the lab, so an
incident raises the same alerts with or without Prometheus.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .alerts import ALERT_COLUMNS, AlertEvaluator, load_rules, scale_rules

if TYPE_CHECKING:
    import pandas as pd

    from ..lab import Lab
    from ..probes.prometheus import PrometheusClient
    from ..probes.scrape import MetricsScraper
    from .prometheus_server import PrometheusServer

__all__ = ["LabMonitor"]

logger = logging.getLogger(__name__)

RULES_FILE = "virtengine.rules.yml"


class LabMonitor:
    """Prometheus, the embedded scraper and the alert evaluator of one lab."""

    def __init__(self, lab: "Lab") -> None:
        self.lab = lab
        self._scraper: MetricsScraper | None = None
        self._evaluator: AlertEvaluator | None = None

    # -- Prometheus ----------------------------------------------------------------------

    def prometheus(self) -> "PrometheusServer | None":
        """Return this lab's running Prometheus server, or None."""
        from .prometheus_server import PrometheusServer

        server = PrometheusServer.attach(self.lab.config.home)
        return server if server is not None and server.is_running() else None

    def start_prometheus(self) -> "PrometheusServer":
        """Start (or reconfigure) a real Prometheus scraping every service, with the lab's alert rules.

        Raises ConfigError when no prometheus binary is installed.
        """
        from .prometheus_server import PrometheusServer, prometheus_binary, scrape_targets

        if prometheus_binary() is None:
            raise ConfigError("no prometheus binary on PATH; install it (`apt-get install -y prometheus`) "
                              "or use the embedded scraper, which lab.alerts() falls back to")
        rules_dir = self._write_rules()
        # Prometheus durations take whole units, so 0.2 s is written "200ms".
        interval = f"{round(max(0.2, min(1.0, self.lab.block_time)) * 1000)}ms"
        server = PrometheusServer(self.lab.config.home, scrape_targets(self.lab.status()["services"]),
                                  rules_dir=rules_dir, scrape_interval=interval)
        server.start()
        logger.info("Prometheus for %s at %s", self.lab.config.home, server.url)
        return server

    def stop_prometheus(self) -> bool:
        server = self.prometheus()
        return server.stop() if server is not None else False

    def client(self) -> "PrometheusClient":
        """Return a client of this lab's Prometheus; raises ConfigError when none runs."""
        server = self.prometheus()
        if server is None:
            raise ConfigError("no Prometheus runs for this lab; start one with `incidentlab lab up --prometheus` "
                              "or lab.monitor.start_prometheus()")
        return server.client()

    # -- embedded scraper and alerts -----------------------------------------------------------

    def scraper(self) -> "MetricsScraper":
        """Return the embedded scraper of every service's /metrics, started on first use."""
        from ..probes.scrape import MetricsScraper

        if self._scraper is None:
            targets = {s["name"]: s["metrics"] for s in self.lab.status()["services"] if s.get("metrics")}
            interval = max(0.2, min(1.0, self.lab.block_time))
            self._scraper = MetricsScraper(targets, interval=interval, timeout=interval)
            self._scraper.start()
        return self._scraper

    def alerts(self, source: str = "auto") -> "pd.DataFrame":
        """Return the pending and firing alerts in ALERT_COLUMNS.

        ``source`` is "prometheus", "embedded" (the lab's own evaluation of the same rules on its
        scraper) or "auto": Prometheus when it runs for this lab, else embedded.
        """
        if source not in ("auto", "prometheus", "embedded"):
            raise ConfigError(f"source={source!r} is invalid; use 'auto', 'prometheus' or 'embedded'")
        if source == "prometheus" or (source == "auto" and self.prometheus() is not None):
            return _normalise(self.client().alerts())
        if self._evaluator is None:
            scraper = self.scraper()
            self._evaluator = AlertEvaluator(scraper, load_rules(), time_scale=self.lab.config.time_scale,
                                             interval=scraper.interval)
            self._evaluator.start()
        self._evaluator.evaluate()
        return self._evaluator.alerts()

    def close(self) -> None:
        """Stop the embedded scraper and evaluator (Prometheus, a separate process, stays up)."""
        if self._evaluator is not None:
            self._evaluator.stop()
            self._evaluator = None
        if self._scraper is not None:
            self._scraper.stop()
            self._scraper = None

    def _write_rules(self) -> Path:
        from .._resources import data_path

        rules_dir = self.lab.config.home / "prometheus" / "rules"
        rules_dir.mkdir(parents=True, exist_ok=True)
        text = data_path("alerts", RULES_FILE).read_text(encoding="utf-8")
        (rules_dir / RULES_FILE).write_text(scale_rules(text, self.lab.config.time_scale), encoding="utf-8")
        return rules_dir


def _normalise(frame: "pd.DataFrame") -> "pd.DataFrame":
    """Return Prometheus's /api/v1/alerts table in the embedded evaluator's columns."""
    import pandas as pd

    if frame.empty:
        return pd.DataFrame(columns=ALERT_COLUMNS)
    target = frame.get("instance", frame.get("chain_id", pd.Series([None] * len(frame))))
    result = pd.DataFrame({
        "alertname": frame["alertname"], "state": frame["state"], "severity": frame.get("severity"),
        "target": target, "value": pd.to_numeric(frame.get("value"), errors="coerce"),
        "active_since": frame.get("activeAt"), "summary": frame.get("summary"),
    })
    return result.sort_values(["state", "alertname"], ignore_index=True)

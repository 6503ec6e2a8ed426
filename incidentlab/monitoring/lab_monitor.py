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

    def error_increase(self, window: float | None = None) -> "pd.DataFrame":
        """Return the gateway's 5xx and total requests over the last ``window`` seconds, and their ratio.

        From Prometheus, with the lab document's query ``increase(http_requests_total{code=~"5.."}[W])``,
        when it runs for this lab; else from the embedded scraper. ``window`` defaults to 60 s
        scaled by the lab's time scale (the lab document's 5 minutes would hide a short incident).
        """
        import pandas as pd

        window = window if window is not None else max(2.0, 60 * self.lab.config.time_scale)
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not 0 < window <= 86400:
            raise ConfigError(f"window={window!r} is out of range; give seconds above 0, at most 86400")
        span = f"{round(window * 1000)}ms"
        if self.prometheus() is not None:
            client = self.client()
            errors = client.query(f'sum(increase(http_requests_total{{code=~"5.."}}[{span}]))')
            total = client.query(f"sum(increase(http_requests_total[{span}]))")
            source = "prometheus"
            errors_value = float(errors["value"].sum()) if not errors.empty else 0.0
            total_value = float(total["value"].sum()) if not total.empty else 0.0
        else:
            frame = self.scraper().frame("http_requests_total")
            source = "embedded scraper"
            errors_value, total_value = _increase(frame, window)
        ratio = errors_value / total_value if total_value else 0.0
        return pd.DataFrame([{"source": source, "window_s": window, "requests": round(total_value, 1),
                              "5xx": round(errors_value, 1), "error_ratio": round(ratio, 3)}])

    def watch_requests(self, seconds: float, *, mode: str = "interactive", timeline: list = ()):
        """Show requests by status class and the 5xx ratio, redrawn while ``seconds`` pass; return the figure."""
        from ..live import LivePlot, check_watch_seconds, plot_requests

        check_watch_seconds(seconds)  # before the scraper starts
        scraper = self.scraper()
        plot = LivePlot(lambda: plot_requests(scraper.frame("http_requests_total"), timeline), mode=mode,
                        every=max(0.5, scraper.interval))
        plot.watch(seconds)
        return None

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
    # The alert's series names its target by instance, else by job (ratios summed per job) or chain.
    target = pd.Series([None] * len(frame), index=frame.index)
    for label in ("chain_id", "job", "instance"):
        if label in frame:
            target = frame[label].where(frame[label].notna(), target)
    result = pd.DataFrame({
        "alertname": frame["alertname"], "state": frame["state"], "severity": frame.get("severity"),
        "target": target, "value": pd.to_numeric(frame.get("value"), errors="coerce"),
        "active_since": frame.get("activeAt"), "summary": frame.get("summary"),
    })
    return result.sort_values(["state", "alertname"], ignore_index=True)


def _increase(frame: "pd.DataFrame", window: float) -> tuple[float, float]:
    """Return (5xx increase, total increase) of http_requests_total over the last ``window`` seconds."""
    import datetime as _dt

    if frame.empty:
        return 0.0, 0.0
    recent = frame[frame["time"] >= frame["time"].max() - _dt.timedelta(seconds=window)]
    recent = recent.assign(series=recent["labels"].map(lambda labels: tuple(sorted(labels.items()))))
    errors = total = 0.0
    for (_, series), rows in recent.groupby(["target", "series"]):
        values = rows["value"].tolist()
        # Counters only grow; a drop is a restarted process that counts from zero again.
        grown = sum(b - a if b >= a else b for a, b in zip(values, values[1:]))
        total += grown
        if dict(series).get("code", "").startswith("5"):
            errors += grown
    return errors, total

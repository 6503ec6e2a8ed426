"""Monitoring of the lab: a real Prometheus server, started as a local process, scraping the lab's targets."""

from .prometheus_server import (
    DEFAULT_PORT,
    JOB_VALIDATORS,
    PrometheusServer,
    PrometheusServerError,
    prometheus_binary,
    scrape_targets,
)

__all__ = [
    "DEFAULT_PORT",
    "JOB_VALIDATORS",
    "PrometheusServer",
    "PrometheusServerError",
    "prometheus_binary",
    "scrape_targets",
]

"""Live plots: rates from scraped counters, figures drawn, one figure kept in batch mode."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from incidentlab.live import LivePlot, plot_latency, plot_requests, status_class_rates


def scraped(points):
    """A MetricsScraper-shaped frame from (second, code, total) points of http_requests_total."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    return pd.DataFrame([
        {"time": start + dt.timedelta(seconds=second), "target": "virtengine-gateway",
         "metric": "http_requests_total", "labels": {"code": code, "method": "GET", "handler": "/rpc/status"},
         "value": float(total)}
        for second, code, total in points
    ])


def test_rates_by_class_and_error_ratio():
    frame = scraped([(0, "200", 0), (0, "504", 0), (1, "200", 8), (1, "504", 2), (2, "200", 8), (2, "504", 12)])
    rates = status_class_rates(frame)
    assert rates["2xx"].tolist() == [8.0, 0.0]
    assert rates["5xx"].tolist() == [2.0, 10.0]
    assert rates["error_ratio"].tolist() == pytest.approx([0.2, 1.0])


def test_counter_reset_counts_from_zero():
    frame = scraped([(0, "200", 50), (1, "200", 3)])
    assert status_class_rates(frame)["2xx"].tolist() == [3.0]


def test_plots_have_units_and_titles():
    frame = scraped([(0, "200", 0), (1, "200", 5), (2, "502", 4)])
    figure = plot_requests(frame)
    axes = figure.axes[0]
    assert axes.get_ylabel() == "requests per second"
    assert "5xx" in axes.get_title()
    assert plot_latency(frame).axes[0].get_ylabel() == "latency (ms)"


def test_batch_mode_draws_once(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda figure, display_id=False: shown.append(figure) or Handle())

    class Handle:
        def update(self, figure):
            shown.append(figure)

    draws = []
    plot = LivePlot(lambda: draws.append(1) or len(draws), mode="batch", every=0.01)
    plot.watch(0.05, interval=0.01)
    assert draws == [1]
    assert len(shown) == 1

    live = LivePlot(lambda: draws.append(1) or len(draws), mode="interactive", every=0.0)
    live.watch(0.05, interval=0.01)
    assert len(shown) > 2

"""Live plots of what the probes and scrapes see: block height, request rate, error ratio, latency.

In JupyterLab a LivePlot redraws one figure in place through a display handle, at most once per
``every`` seconds; in batch mode (papermill) it shows one final static figure. Plain matplotlib.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from .errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LivePlot", "check_watch_seconds", "plot_block_height", "plot_requests", "plot_latency", "status_class_rates"]

logger = logging.getLogger(__name__)

#: Maximum live watch in seconds: a notebook cell should not block for more than an hour.
MAX_WATCH_SECONDS = 3600

#: Timeline kinds drawn as vertical lines, with their colour and label.
# Black and grey, so that no marker shares a colour with a validator's line.
MARKED_EVENTS = {
    "fault_injected": ("black", "--", "fault injected"),
    "action": ("dimgray", ":", "action"),
    "recovery_verified": ("darkgray", "-.", "recovery verified"),
}
CLASS_COLOURS = {"2xx": "tab:green", "3xx": "tab:cyan", "4xx": "tab:orange", "5xx": "tab:red"}


class LivePlot:
    """A figure redrawn in place while ``watch()`` runs.

    Takes ``draw``, a function returning a new matplotlib Figure from the data collected so far,
    and ``mode``: "interactive" updates a display handle at most every ``every`` seconds,
    "batch" draws only once at the end, so an executed notebook keeps one static figure.
    """

    def __init__(self, draw: Callable[[], object], *, mode: str = "interactive", every: float = 1.0) -> None:
        self.draw = draw
        self.mode = mode
        self.every = every
        self._handle = None
        self._last = 0.0

    def update(self, force: bool = False) -> None:
        """Redraw unless the last redraw was less than ``every`` seconds ago (or in batch mode)."""
        if self.mode == "batch" and not force:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        from IPython.display import display

        figure = self.draw()
        if self._handle is None:
            self._handle = display(figure, display_id=True)
        else:
            self._handle.update(figure)

    def watch(self, seconds: float, interval: float | None = None) -> None:
        """Keep redrawing for ``seconds`` (the data keeps arriving from background probes), then draw the last figure.

        Raises ConfigError when ``seconds`` is not a number from 0 to MAX_WATCH_SECONDS.
        """
        check_watch_seconds(seconds)
        interval = self.every if interval is None else interval
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.update()
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        self.update(force=True)


def check_watch_seconds(seconds: float) -> float:
    """Return ``seconds``; raises ConfigError when it is not a number from 0 to MAX_WATCH_SECONDS."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= MAX_WATCH_SECONDS:
        raise ConfigError(f"seconds={seconds!r} is out of range; watch for 0 to {MAX_WATCH_SECONDS} seconds, like 10")
    return seconds


def plot_block_height(samples: "pd.DataFrame", timeline: list = ()):
    """Plot latest_block_height per validator against UTC time; failed probes are drawn as x.

    Takes the probe samples (columns time, target, ok, height) and the incident timeline.
    Returns the matplotlib Figure.
    """
    figure, axes = _axes()
    if samples is not None and not samples.empty:
        for target, rows in samples.groupby("target"):
            good = rows[rows["ok"]]
            line, = axes.step(good["time"], good["height"], where="post", label=target)
            failed = rows[~rows["ok"]]
            if not failed.empty:
                # Draw each failed probe at the last height this target reported before it.
                last_known = good["height"].reindex(rows.index).ffill().bfill().fillna(0)
                axes.plot(failed["time"], last_known[failed.index], "x", color=line.get_color(), alpha=0.5)
    _mark(axes, timeline)
    return _finish(figure, axes, "Block height per validator (x: probe failed)", "latest block height (blocks)")


def status_class_rates(frame: "pd.DataFrame", metric: str = "http_requests_total") -> "pd.DataFrame":
    """Return requests per second by status class (2xx, 5xx, ...) between consecutive scrapes.

    Takes a MetricsScraper frame (time, target, metric, labels, value) and returns a table
    indexed by time with one column per status class, plus ``error_ratio`` (5xx over all).
    """
    import pandas as pd

    rows = frame[frame["metric"] == metric]
    if rows.empty:
        return pd.DataFrame(columns=["error_ratio"])
    rows = rows.assign(status_class=rows["labels"].map(lambda labels: f"{str(labels.get('code', '?'))[:1]}xx"),
                       series=rows["labels"].map(lambda labels: tuple(sorted(labels.items()))))
    totals = rows.groupby(["time", "status_class"])["value"].sum().unstack(fill_value=0.0).sort_index()
    seconds = totals.index.to_series().diff().dt.total_seconds()
    # Counters only grow, so a negative step is a restart of the counting process: count from zero.
    increase = totals.diff().where(lambda step: step >= 0, totals)
    rates = increase.div(seconds, axis=0).iloc[1:].fillna(0.0)
    total = rates.sum(axis=1)
    rates["error_ratio"] = (rates.get("5xx", 0.0) / total).where(total > 0, 0.0)
    return rates


def plot_requests(frame: "pd.DataFrame", timeline: list = ()):
    """Plot request rate by status class (stacked) and the 5xx error ratio from scraped counters."""
    rates = status_class_rates(frame)
    figure, axes = _axes()
    classes = [column for column in rates.columns if column != "error_ratio"]
    if classes:
        axes.stackplot(rates.index, *(rates[c] for c in classes), labels=classes,
                       colors=[CLASS_COLOURS.get(c, "tab:gray") for c in classes], alpha=0.7, step="post")
        ratio_axes = axes.twinx()
        ratio_axes.plot(rates.index, rates["error_ratio"] * 100, color="black", linewidth=1.5, label="5xx ratio")
        ratio_axes.set_ylabel("5xx error ratio (%)")
        ratio_axes.set_ylim(0, 100)
    _mark(axes, timeline)
    return _finish(figure, axes, "Requests by status class, and the 5xx ratio", "requests per second")


def plot_latency(frame: "pd.DataFrame", metric: str = "http_request_duration_seconds", timeline: list = ()):
    """Plot the mean request latency between scrapes, from a histogram's _sum and _count."""
    figure, axes = _axes()
    sums = frame[frame["metric"] == f"{metric}_sum"].groupby("time")["value"].sum().sort_index()
    counts = frame[frame["metric"] == f"{metric}_count"].groupby("time")["value"].sum().sort_index()
    if not sums.empty and not counts.empty:
        mean = (sums.diff() / counts.diff()).where(counts.diff() > 0)
        axes.plot(mean.index, mean * 1000, color="tab:purple", label="mean latency")
    elif sums.empty:
        axes.text(0.5, 0.5, f"no {metric} samples yet", ha="center", transform=axes.transAxes)
    _mark(axes, timeline)
    return _finish(figure, axes, "Mean request latency between scrapes", "latency (ms)")


def _axes():
    import matplotlib

    # Outside Jupyter (scripts, papermill's kernel has its own) draw without a window.
    if matplotlib.get_backend().lower().startswith(("qt", "tk", "gtk", "macosx")):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(9, 4))


def _mark(axes, timeline) -> None:
    seen = set()
    for event in timeline:
        if event.kind in MARKED_EVENTS:
            colour, style, label = MARKED_EVENTS[event.kind]
            axes.axvline(event.time, color=colour, linestyle=style, linewidth=1.5,
                         label=None if event.kind in seen else label)
            seen.add(event.kind)


def _finish(figure, axes, title: str, ylabel: str):
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    axes.set_xlabel("time (UTC)")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper left", fontsize="small")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    plt.close(figure)
    return figure

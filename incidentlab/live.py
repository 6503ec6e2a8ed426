"""Plots of what the probes saw: block height per validator, with faults and actions marked."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["plot_block_height"]

#: Timeline kinds drawn as vertical lines, with their colour and label.
MARKED_EVENTS = {
    "fault_injected": ("tab:red", "fault injected"),
    "action": ("tab:green", "action"),
    "recovery_verified": ("tab:blue", "recovery verified"),
}


def plot_block_height(samples: "pd.DataFrame", timeline: list = ()):
    """Plot latest_block_height per validator against UTC time; failed probes are drawn as x.

    Takes the probe samples (columns time, target, ok, height) and the incident timeline.
    Returns the matplotlib Figure.
    """
    import matplotlib

    if matplotlib.get_backend().lower().startswith("qt") or matplotlib.get_backend() == "TkAgg":
        matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 4))
    if samples is not None and not samples.empty:
        for target, rows in samples.groupby("target"):
            good = rows[rows["ok"]]
            line, = axes.step(good["time"], good["height"], where="post", label=target)
            failed = rows[~rows["ok"]]
            if not failed.empty:
                # Draw each failed probe at the last height this target answered before it.
                last_known = good["height"].reindex(rows.index).ffill().bfill().fillna(0)
                axes.plot(failed["time"], last_known[failed.index], "x", color=line.get_color(), alpha=0.5)
    seen = set()
    for event in timeline:
        if event.kind in MARKED_EVENTS:
            colour, label = MARKED_EVENTS[event.kind]
            axes.axvline(event.time, color=colour, linestyle="--",
                         label=None if event.kind in seen else label)
            seen.add(event.kind)
    axes.set_xlabel("time (UTC)")
    axes.set_ylabel("latest block height (blocks)")
    axes.set_title("Block height per validator (x: probe failed)")
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    axes.legend(loc="upper left", fontsize="small")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    plt.close(figure)
    return figure

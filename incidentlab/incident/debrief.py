"""The debrief: every incident record of a lab home, summarised, measured and written up.

Every number comes from the saved records (the timelines the lab wrote while the incidents ran),
never from the curriculum's example figures.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .._fileio import write_atomic
from .record import Incident, IncidentStore

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Debrief", "PHASES"]

logger = logging.getLogger(__name__)

#: Phases of an incident drawn in the timeline chart: (name, start event, end event).
PHASES = (
    ("detect", "fault_injected", "detected"),
    ("acknowledge", "detected", "acknowledged"),
    ("mitigate", "acknowledged", "action"),
    ("recover", "action", "recovery_verified"),
)
POSTMORTEM_TEMPLATE = "postmortem.md.j2"


class Debrief:
    """The incidents of one lab home, as the tables, chart and postmortem of a debrief."""

    def __init__(self, home: str | Path) -> None:
        self.home = Path(home)
        self.incidents: list[Incident] = IncidentStore(self.home).list()

    def summary(self) -> "pd.DataFrame":
        """Return one row per incident: its decisions, measured times (s) and communication.

        Columns: id, scenario, learner, severity, root cause, status, the four times, whether
        the response target was met, and how many status updates were posted and late.
        """
        import pandas as pd

        from .communication import response_check

        rows = []
        for incident in self.incidents:
            diagnosis = incident.decisions.get("diagnosis") or {}
            times = incident.measured_times()
            rows.append({
                "incident": incident.id, "scenario": incident.scenario, "learner": incident.learner,
                "severity": incident.severity, "root cause category": diagnosis.get("category"),
                "target": diagnosis.get("target"), "status": incident.status,
                **{f"{name.removeprefix('time_to_')} (s)": _seconds(value) for name, value in times.items()},
                "response target met": response_check(incident)["met"],
                "updates posted": len(incident.decisions.get("status_updates", [])),
                "updates late": sum(1 for event in incident.timeline if event.kind == "update_overdue"),
            })
        return pd.DataFrame(rows)

    def metrics_review(self) -> "pd.DataFrame":
        """Return the median times per simulation (detect, acknowledge, mitigate, recover) and counts."""
        summary = self.summary()
        if summary.empty:
            return summary
        columns = [column for column in summary.columns if column.endswith("(s)")]
        review = summary.groupby("scenario")[columns].median().round(1)
        review.insert(0, "incidents", summary.groupby("scenario").size())
        review.insert(1, "resolved", summary[summary["status"] == "Resolved"].groupby("scenario").size())
        return review.fillna({"resolved": 0}).astype({"resolved": int})

    def root_causes(self) -> "pd.DataFrame":
        """Return how many incidents each root-cause category explained."""
        summary = self.summary()
        if summary.empty:
            return summary
        counts = summary["root cause category"].fillna("not recorded").value_counts()
        return counts.rename_axis("root cause category").reset_index(name="incidents")

    def phases(self) -> "pd.DataFrame":
        """Return the seconds each incident spent in each phase, measured from its timeline."""
        import pandas as pd

        rows = []
        for incident in self.incidents:
            marks = _marks(incident)
            row = {"incident": incident.id, "scenario": incident.scenario}
            for name, start, end in PHASES:
                row[name] = _span(marks.get(start), marks.get(end))
            rows.append(row)
        return pd.DataFrame(rows)

    def plot_phases(self):
        """Draw each incident as a horizontal bar split into its phases; return the Figure."""
        from ..live import _axes

        phases = self.phases()
        figure, axes = _axes()
        colours = {"detect": "tab:red", "acknowledge": "tab:orange", "mitigate": "tab:purple", "recover": "tab:blue"}
        for index, row in phases.iterrows():
            left = 0.0
            for name, _, _ in PHASES:
                width = row[name] if row[name] == row[name] and row[name] is not None else 0.0
                axes.barh(index, width, left=left, color=colours[name], label=name if index == 0 else None)
                left += width
        axes.set_yticks(range(len(phases)), [f"{r.incident} ({r.scenario})" for r in phases.itertuples()])
        axes.set_xlabel("seconds since the fault was injected")
        axes.set_title("Phases of each incident")
        if len(phases):
            axes.legend(loc="lower right", fontsize="small")
        axes.grid(alpha=0.3, axis="x")
        figure.tight_layout()
        import matplotlib.pyplot as plt

        plt.close(figure)
        return figure

    def postmortem(self) -> str:
        """Render the blameless postmortem of every incident as Markdown."""
        import jinja2

        from .._resources import data_path

        template_text = data_path("templates", POSTMORTEM_TEMPLATE).read_text(encoding="utf-8")
        template = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True,
                                      lstrip_blocks=True).from_string(template_text)
        return template.render(
            generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            incidents=[_context(incident) for incident in self.incidents],
            review=_table(self.metrics_review().reset_index()) if self.incidents else "",
            causes=_table(self.root_causes()) if self.incidents else "",
        )

    def save(self, path: str | Path | None = None) -> Path:
        """Write the postmortem (default: HOME/postmortems/simulation-summary.md) and return its path."""
        path = Path(path) if path else self.home / "postmortems" / "simulation-summary.md"
        write_atomic(path, self.postmortem())
        logger.info("postmortem of %d incident(s) written to %s", len(self.incidents), path)
        return path


def _marks(incident: Incident) -> dict[str, _dt.datetime]:
    """Return the time of each phase boundary: first occurrence of each event kind."""
    marks = {}
    for kind in ("fault_injected", "acknowledged", "action", "recovery_verified"):
        event = incident.first(kind)
        if event is not None:
            marks[kind] = event.time
    detected = [incident.first(kind) for kind in ("probe_failed", "acknowledged")]
    detected = [event.time for event in detected if event is not None]
    if detected:
        marks["detected"] = min(detected)
    return marks


def _span(start: _dt.datetime | None, end: _dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def _seconds(value: _dt.timedelta | None) -> float | None:
    return None if value is None else round(value.total_seconds(), 1)


def _context(incident: Incident) -> dict:
    decisions = incident.decisions
    actions = [e.message for e in incident.timeline if e.kind == "action"]
    return {
        "id": incident.id, "title": incident.title, "scenario": incident.scenario, "learner": incident.learner,
        "severity": incident.severity or "not recorded", "status": incident.status,
        "impact": incident.impact,
        "root_cause": decisions.get("root_cause") or "not recorded",
        "category": (decisions.get("diagnosis") or {}).get("category") or "not recorded",
        "actions": actions,
        "times": {name.replace("_", " "): _seconds(value) for name, value in incident.measured_times().items()},
        "action_items": decisions.get("action_items") or [],
        "lessons": decisions.get("lessons_learned") or "not recorded",
        "timeline": [(e.time.strftime("%H:%M:%S"), e.source, e.kind.replace("_", " "), e.message)
                     for e in incident.timeline],
    }


def _table(frame: "pd.DataFrame") -> str:
    if frame.empty:
        return ""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join("" if v != v else str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])

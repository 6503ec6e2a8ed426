"""Grading outputs: gradebook.csv, per-learner feedback in Markdown and the class summary page.

Writes under the output folder only. Learner text is data: it is escaped for Markdown and
HTML, and a CSV cell that a spreadsheet would read as a formula is prefixed with a quote.
"""

from __future__ import annotations

import base64
import csv
import io
import logging
import re
from pathlib import Path

from .._fileio import write_atomic

__all__ = ["write_outputs", "gradebook_rows", "ITEMS"]

logger = logging.getLogger(__name__)

#: Rubric items in gradebook column order.
ITEMS = ("severity", "root_cause", "remediation", "timeline", "status_updates")
COLUMNS = ("learner", "learner_file", "scenario", "seed", "variant", "status", "score", "max_score", *ITEMS,
           "time_to_detect_s", "time_to_recover_s", "attempts", "reason", "file", "notebook")
#: First characters that make a spreadsheet read a CSV cell as a formula ("CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]|<>~])")


def write_outputs(out: Path, rows: list[dict], scenarios: dict) -> tuple[Path, Path]:
    """Write gradebook.csv, feedback/<learner>.md and summary.html under ``out``; return the gradebook and summary paths."""
    gradebook = _write_gradebook(out / "gradebook.csv", gradebook_rows(rows))
    for learner, learner_rows in _by_learner(rows).items():
        write_atomic(out / "feedback" / f"{learner}.md", _feedback(learner_rows))
    summary = write_atomic(out / "summary.html", _summary(rows, scenarios))
    logger.info("wrote %s, %s and feedback for %d learners", gradebook, summary, len(_by_learner(rows)))
    return gradebook, summary


def gradebook_rows(rows: list[dict]) -> list[dict]:
    """Return the gradebook: one row per learner and scenario, then one TOTAL row per learner, then invalid files."""
    table = []
    for learner, learner_rows in _by_learner(rows).items():
        for row in learner_rows:
            points = {item["item"]: item["points"] for item in row["items"]}
            measured = row.get("measured_s") or {}
            table.append({"learner": row["learner"], "learner_file": learner, "scenario": row["scenario"],
                          "seed": row["seed"], "variant": row.get("variant"), "status": row["status"],
                          "score": row["score"], "max_score": row["max_score"],
                          **{item: points.get(item) for item in ITEMS},
                          "time_to_detect_s": _round(measured.get("time_to_detect")),
                          "time_to_recover_s": _round(measured.get("time_to_recover")),
                          "attempts": row.get("attempts"), "reason": row["reason"], "file": row["file"],
                          "notebook": row.get("notebook")})
        table.append(_total(learner, learner_rows))
    for row in rows:
        if row["status"] == "invalid":
            table.append({"status": "invalid", "reason": row["reason"], "file": row["file"]})
    return table


def _total(learner: str, rows: list[dict]) -> dict:
    """Return a learner's TOTAL row over the graded rows only: a row not graded adds neither points nor a maximum."""
    graded = [row for row in rows if row["status"] == "ok"]
    missing = len(rows) - len(graded)
    return {"learner": rows[0]["learner"], "learner_file": learner, "scenario": "TOTAL",
            "status": "ok" if not missing else f"incomplete: {missing} of {len(rows)} not graded",
            "score": round(sum(row["score"] for row in graded), 2) if graded else None,
            "max_score": round(sum(row["max_score"] for row in graded), 2) if graded else None}


def _write_gradebook(path: Path, table: list[dict]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({column: _csv_cell(row.get(column)) for column in COLUMNS})
    return write_atomic(path, buffer.getvalue())


def _csv_cell(value):
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def _by_learner(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        if row["status"] != "invalid":
            grouped.setdefault(row["learner_safe"], []).append(row)
    return grouped


def _feedback(rows: list[dict]) -> str:
    lines = [f"# Feedback for {_md(rows[0]['learner'])}", ""]
    for row in rows:
        lines += [f"## {_md(row['scenario'])} (seed {row['seed']}, variant {_md(row.get('variant') or '?')})", ""]
        if row["status"] != "ok":
            lines += [f"Not graded ({row['status']}): {_md(row['reason'] or 'no reason recorded')}",
                      "", "Ask your instructor to look at the executed notebook.", ""]
            continue
        lines += [f"Score: **{row['score']:g} of {row['max_score']:g}**", "", "| item | points | feedback |",
                  "|---|---|---|"]
        for item in row["items"]:
            lines.append(f"| {item['item']} | {item['points']:g} / {item['max_points']:g} | {_md(item['reason'])} |")
        lines.append("")
    return "\n".join(lines)


def _md(text) -> str:
    """Escape the characters of ``text`` that would make Markdown add a link, code, '*' emphasis, raw HTML or a table cell."""
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))
    return escaped.replace("\r", " ").replace("\n", " ")


def _summary(rows: list[dict], scenarios: dict) -> str:
    import jinja2

    graded = [row for row in rows if row["status"] == "ok"]
    by_scenario = {sid: [row for row in graded if row["scenario"] == sid] for sid in sorted(scenarios)}
    stats = [{"scenario": sid, "graded": len(items), "max": scenarios[sid].max_points,
              "mean": round(sum(r["score"] for r in items) / len(items), 1) if items else None}
             for sid, items in by_scenario.items()]
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    environment = jinja2.Environment(autoescape=True)
    return environment.from_string(_SUMMARY_TEMPLATE).render(
        stats=stats, statuses=statuses, rows=[row for row in rows if row["status"] != "ok"],
        scores_png=_plot_scores(by_scenario, scenarios), times_png=_plot_times(by_scenario))


def _plot_scores(by_scenario: dict[str, list[dict]], scenarios: dict) -> str:
    from matplotlib.ticker import MaxNLocator

    figure, axes = _figure(len(by_scenario))
    for axis, (sid, rows) in zip(axes, by_scenario.items()):
        maximum = scenarios[sid].max_points
        axis.hist([row["score"] for row in rows], bins=10, range=(0, maximum), color="#4c72b0")
        axis.set(title=sid, xlabel=f"score (of {maximum:g})", ylabel="learners")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _png(figure)


def _plot_times(by_scenario: dict[str, list[dict]]) -> str:
    figure, axes = _figure(len(by_scenario))
    for axis, (sid, rows) in zip(axes, by_scenario.items()):
        series = [[row["measured_s"].get(name) for row in rows if row["measured_s"].get(name) is not None]
                  for name in ("time_to_detect", "time_to_recover")]
        if any(series):
            axis.boxplot([values or [float("nan")] for values in series])
        # The box hides single values, so every learner is also drawn as a point.
        for position, values in enumerate(series, start=1):
            axis.plot([position] * len(values), values, "o", color="#4c72b0", alpha=0.6)
        axis.set_xticks([1, 2], ["detect", "recover"])
        axis.set(title=sid, ylabel="seconds from the fault")
    return _png(figure)


def _figure(panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, max(1, panels), figsize=(4 * max(1, panels), 3), squeeze=False)
    return figure, list(axes[0])


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _round(value):
    return round(value, 2) if isinstance(value, (int, float)) else None


_SUMMARY_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Class summary</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style>
</head><body>
<h1>Class summary</h1>
<h2>Rows by status</h2>
<table><tr><th>status</th><th>rows</th></tr>
{% for status, count in statuses|dictsort %}<tr><td>{{ status }}</td><td>{{ count }}</td></tr>{% endfor %}
</table>
<h2>Scores per simulation</h2>
<table><tr><th>simulation</th><th>graded</th><th>mean score</th><th>maximum</th></tr>
{% for s in stats %}<tr><td>{{ s.scenario }}</td><td>{{ s.graded }}</td><td>{{ s.mean if s.mean is not none else "" }}</td><td>{{ s.max }}</td></tr>{% endfor %}
</table>
<img alt="score distribution per simulation" src="data:image/png;base64,{{ scores_png }}">
<h2>Times to detect and to recover</h2>
<img alt="times to detect and recover per simulation" src="data:image/png;base64,{{ times_png }}">
<h2>Rows without a grade</h2>
<table><tr><th>file</th><th>learner</th><th>scenario</th><th>status</th><th>reason</th></tr>
{% for r in rows %}<tr><td>{{ r.file }}</td><td>{{ r.learner }}</td><td>{{ r.scenario }}</td><td>{{ r.status }}</td><td>{{ r.reason }}</td></tr>{% endfor %}
</table>
</body></html>
"""

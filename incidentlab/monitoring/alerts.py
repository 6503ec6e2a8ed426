"""Alert rules of data/alerts: time-scaled for Prometheus, and evaluated by the lab without it.

Without a Prometheus server the lab evaluates each rule's meaning on the embedded scraper's data,
with Prometheus's states: a rule whose condition holds is pending, and firing once it has held
for the rule's ``for`` duration.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import pandas as pd

    from ..probes.scrape import MetricsScraper

__all__ = ["Rule", "load_rules", "scale_rules", "AlertEvaluator", "ALERT_COLUMNS"]

logger = logging.getLogger(__name__)

ALERT_COLUMNS = ["alertname", "state", "severity", "target", "value", "active_since", "summary"]
#: Rule thresholds that are durations in seconds, so they shrink with the lab's time scale.
TIME_THRESHOLDS = {"ChainSlow": 3.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclasses.dataclass(frozen=True)
class Rule:
    """One alerting rule: its name, PromQL expression, ``for`` in seconds, labels and annotations."""

    name: str
    expr: str
    for_seconds: float
    labels: dict
    annotations: dict


def load_rules(path: str | Path | None = None) -> list[Rule]:
    """Read the alerting rules of a Prometheus rules file (default: data/alerts/virtengine.rules.yml)."""
    import yaml

    from .._resources import data_path

    path = Path(path) if path else data_path("alerts", "virtengine.rules.yml")
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [
        Rule(rule["alert"], rule["expr"], _seconds(rule.get("for", "0s")), rule.get("labels", {}),
             rule.get("annotations", {}))
        for group in document["groups"] for rule in group["rules"] if "alert" in rule
    ]


def scale_rules(text: str, time_scale: float) -> str:
    """Return a rules file with every ``for:`` and range window multiplied by ``time_scale``.

    Duration thresholds (ChainSlow's mean block interval) shrink the same way, so alerts on a
    compressed lab fire after the same number of blocks as on a real chain.
    """
    def scaled(match: re.Match) -> str:
        return _format(max(1.0, _seconds(match.group(1)) * time_scale))

    text = re.sub(r"(?<=for: )(\S+)", scaled, text)
    text = re.sub(r"(?<=\[)(\d+(?:\.\d+)?(?:ms|s|m|h))(?=\])", scaled, text)
    for alert, threshold in TIME_THRESHOLDS.items():
        pattern = re.compile(rf"(alert: {alert}\n(?:.*\n)*?.*?)> {threshold:g}\b")
        text = pattern.sub(lambda m: f"{m.group(1)}> {threshold * time_scale:g}", text, count=1)
    return text


class AlertEvaluator:
    """Evaluate the rules' conditions on a MetricsScraper every ``interval`` seconds, like Prometheus.

    Takes the scraper, the rules, and the lab's time scale (windows, ``for`` durations and time
    thresholds are multiplied by it). ``alerts()`` returns the pending and firing alerts.
    """

    def __init__(self, scraper: "MetricsScraper", rules: list[Rule], *, time_scale: float = 1.0,
                 interval: float = 1.0) -> None:
        self.scraper = scraper
        self.rules = [rule for rule in rules if rule.name in _CONDITIONS]
        self.time_scale = time_scale
        self.interval = interval
        self._active: dict[tuple[str, str], dict] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alert-evaluator", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def evaluate(self) -> None:
        """Evaluate every rule once and update the pending and firing alerts."""
        now = time.time()
        seen = set()
        for rule in self.rules:
            for target, value in _CONDITIONS[rule.name](self, rule).items():
                key = (rule.name, target)
                seen.add(key)
                with self._lock:
                    alert = self._active.setdefault(key, {"since": now, "state": "pending"})
                    alert["value"] = value
                    if now - alert["since"] >= rule.for_seconds * self.time_scale:
                        if alert["state"] != "firing":
                            logger.info("alert %s firing for %s (value %s)", rule.name, target, value)
                        alert["state"] = "firing"
        with self._lock:
            for key in set(self._active) - seen:
                logger.info("alert %s resolved for %s", *key)
                del self._active[key]

    def alerts(self) -> "pd.DataFrame":
        """Return the pending and firing alerts in ALERT_COLUMNS, firing first."""
        import pandas as pd

        rules = {rule.name: rule for rule in self.rules}
        with self._lock:
            rows = [{
                "alertname": name, "state": alert["state"], "severity": rules[name].labels.get("severity"),
                "target": target, "value": alert.get("value"),
                "active_since": _dt.datetime.fromtimestamp(alert["since"], _dt.timezone.utc),
                "summary": _render(rules[name].annotations.get("summary", ""), target, alert.get("value")),
            } for (name, target), alert in self._active.items()]
        frame = pd.DataFrame(rows, columns=ALERT_COLUMNS)
        return frame.sort_values(["state", "alertname", "target"], ignore_index=True)

    # -- conditions --------------------------------------------------------------------------

    def window(self, rule: Rule) -> float:
        """Return the rule's range window in seconds, time-scaled (the first [..] of its expression)."""
        match = re.search(r"\[(\d+(?:\.\d+)?(?:ms|s|m|h))\]", rule.expr)
        return max(1.0, _seconds(match.group(1)) * self.time_scale) if match else 60.0 * self.time_scale

    def recent(self, metric: str, seconds: float) -> "pd.DataFrame":
        frame = self.scraper.frame(metric)
        if frame.empty:
            return frame
        cutoff = frame["time"].max() - _dt.timedelta(seconds=seconds)
        return frame[frame["time"] >= cutoff]

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.evaluate()
            except Exception:
                logger.exception("alert evaluation failed; retrying in %.1f s", self.interval)


def _target_down(evaluator: AlertEvaluator, rule: Rule) -> dict[str, float]:
    latest = evaluator.scraper.latest("up")
    return {row.target: 0.0 for row in latest.itertuples() if row.value == 0}


def _chain_halted(evaluator: AlertEvaluator, rule: Rule) -> dict[str, float]:
    window = evaluator.window(rule)
    frame = evaluator.recent("cometbft_consensus_latest_block_height", window)
    if frame.empty or (frame["time"].max() - frame["time"].min()).total_seconds() < window * 0.9:
        return {}  # not enough history to say that nothing changed for a whole window
    changes = frame.groupby("target")["value"].apply(lambda values: int((values.diff().fillna(0) != 0).sum()))
    return {"chain": 0.0} if changes.max() == 0 else {}


def _chain_slow(evaluator: AlertEvaluator, rule: Rule) -> dict[str, float]:
    window = evaluator.window(rule)
    threshold = TIME_THRESHOLDS["ChainSlow"] * evaluator.time_scale
    total = evaluator.scraper.increase("cometbft_consensus_block_interval_seconds_sum", window, by="target")
    count = evaluator.scraper.increase("cometbft_consensus_block_interval_seconds_count", window, by="target")
    if total.empty or count.empty:
        return {}
    merged = total.merge(count, on="target", suffixes=("_sum", "_count"))
    merged = merged[merged["value_count"] > 0]
    mean = merged["value_sum"] / merged["value_count"]
    return {row.target: float(m) for row, m in zip(merged.itertuples(), mean) if m > threshold}


def _validator_missing(evaluator: AlertEvaluator, rule: Rule) -> dict[str, float]:
    latest = evaluator.scraper.latest("cometbft_consensus_missing_validators")
    if latest.empty or latest["value"].max() <= 0:
        return {}
    return {"chain": float(latest["value"].max())}


def _high_error_ratio(evaluator: AlertEvaluator, rule: Rule) -> dict[str, float]:
    window = evaluator.window(rule)
    frame = evaluator.recent("http_requests_total", window)
    if frame.empty:
        return {}
    frame = frame.assign(series=frame["labels"].map(lambda labels: tuple(sorted(labels.items()))),
                         error=frame["labels"].map(lambda labels: str(labels.get("code", "")).startswith("5")))
    grown = frame.groupby(["target", "series", "error"])["value"].agg(lambda v: max(0.0, v.iloc[-1] - v.iloc[0]))
    by_target = grown.groupby(level=["target", "error"]).sum().unstack(fill_value=0.0)
    result = {}
    for target, row in by_target.iterrows():
        total = row.sum()
        ratio = row.get(True, 0.0) / total if total else 0.0
        if ratio > 0.05:
            result[target] = float(ratio)
    return result


def _veid_score_drop(evaluator: AlertEvaluator, rule: Rule) -> dict[str, float]:
    latest = evaluator.scraper.latest("virtengine_veid_scoring_score_avg")
    return {row.target: float(row.value) for row in latest.itertuples() if row.value < 0.6}


def _veid_scoring_errors(evaluator: AlertEvaluator, rule: Rule) -> dict[str, float]:
    grown = evaluator.scraper.increase("virtengine_veid_scoring_errors_total", evaluator.window(rule), by="target")
    return {row.target: float(row.value) for row in grown.itertuples() if row.value > 0}


_CONDITIONS: dict[str, Callable[[AlertEvaluator, Rule], dict[str, float]]] = {
    "TargetDown": _target_down,
    "ChainHalted": _chain_halted,
    "ChainSlow": _chain_slow,
    "ValidatorMissing": _validator_missing,
    "HighErrorRatio": _high_error_ratio,
    "VeidScoreDrop": _veid_score_drop,
    "VeidScoringErrors": _veid_scoring_errors,
}


def _render(template: str, target: str, value) -> str:
    """Fill the common Prometheus template fields of a summary: $value and $labels.* (with the target)."""
    text = re.sub(r"\{\{\s*\$value[^}]*\}\}", f"{value:g}" if isinstance(value, (int, float)) else str(value), template)
    return re.sub(r"\{\{\s*\$labels\.\w+\s*\}\}", target, text)


def _seconds(text: str) -> float:
    total, position = 0.0, 0
    for match in _DURATION.finditer(str(text)):
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(str(text)):
        raise ValueError(f"invalid duration {text!r}; write it like 30s, 1m or 1m30s")
    return total


def _format(seconds: float) -> str:
    return f"{seconds:g}s" if seconds >= 1 else f"{round(seconds * 1000)}ms"

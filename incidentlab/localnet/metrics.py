"""Prometheus text exposition (format 0.0.4) for localnet services, standard library only."""

from __future__ import annotations

import math
import threading

__all__ = ["Registry", "Gauge", "Histogram", "Counter"]


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape(value: object) -> str:
    # Label values escape backslash, double quote and line feed (exposition format 0.0.4).
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items()) + "}"


class _Metric:
    kind = ""

    def __init__(self, name: str, documentation: str, const_labels: dict | None = None):
        self.name = name
        self.documentation = documentation
        self.const_labels = dict(const_labels or {})
        self._lock = threading.Lock()
        self._values: dict[tuple, float] = {}

    def _key(self, labels: dict) -> tuple:
        return tuple(sorted(labels.items()))

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.documentation}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.const_labels:
            return lines
        for key, value in items or [((), 0.0)]:
            labels = {**self.const_labels, **dict(key)}
            lines.append(f"{self.name}{_format_labels(labels)} {_format_value(value)}")
        return lines


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[self._key(labels)] = float(value)


class Counter(_Metric):
    """A monotonically increasing count. ``name`` is used as given, with or without ``_total``."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"counter {self.name} can only increase; got amount={amount!r}")
        with self._lock:
            key = self._key(labels)
            self._values[key] = self._values.get(key, 0.0) + amount


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, documentation: str, buckets: tuple, const_labels: dict | None = None):
        super().__init__(name, documentation, const_labels)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._series: dict[tuple, list] = {}

    def observe(self, value: float, **labels: str) -> None:
        with self._lock:
            key = self._key(labels)
            counts, totals = self._series.setdefault(key, [[0] * len(self.buckets), [0.0, 0]])
            for index, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[index] += 1
            totals[0] += value
            totals[1] += 1

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            series = {key: ([*counts], [*totals]) for key, (counts, totals) in self._series.items()}
        if not series and self.const_labels:
            series = {(): ([0] * len(self.buckets), [0.0, 0])}
        for key, (counts, (total, count)) in sorted(series.items()):
            labels = {**self.const_labels, **dict(key)}
            for bound, bucket_count in zip(self.buckets, counts):
                bucket_labels = _format_labels({**labels, "le": _format_value(bound)})
                lines.append(f"{self.name}_bucket{bucket_labels} {bucket_count}")
            lines.append(f"{self.name}_sum{_format_labels(labels)} {_format_value(total)}")
            lines.append(f"{self.name}_count{_format_labels(labels)} {count}")
        return lines


class Registry:
    """An ordered set of metrics rendered together for one ``/metrics`` endpoint."""

    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def register(self, metric: _Metric) -> _Metric:
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"

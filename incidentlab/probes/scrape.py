"""Scrape Prometheus `/metrics` endpoints over HTTP on a background thread, without a Prometheus server.

Keeps a bounded history of every series and computes `up`, latest values, rate() and increase() like PromQL.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime as _dt
import logging
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from ..errors import ConfigError
from .prometheus import parse_duration

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MetricsScraper", "FRAME_COLUMNS"]

logger = logging.getLogger(__name__)

#: Columns of frame(), in order.
FRAME_COLUMNS = ("time", "target", "metric", "labels", "value")
DEFAULT_INTERVAL = 1.0
DEFAULT_TIMEOUT = 1.0
#: Samples kept per series: 10 minutes at the default interval.
DEFAULT_MAX_POINTS = 600
#: Series kept in all; samples of new series beyond it are dropped.
DEFAULT_MAX_SERIES = 5000
#: Series that the scraper adds for each target, as Prometheus does.
UP = "up"
SCRAPE_DURATION = "scrape_duration_seconds"
#: Characters of an HTTP error body kept in a target's lastError.
ERROR_EXCERPT_CHARS = 120
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}

_SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]  # (target, metric, sorted label pairs)


class MetricsScraper:
    """Scrape every target's `/metrics` each interval on a daemon thread and keep the samples.

    Takes ``targets`` (target name to metrics URL, such as the ``metrics`` of
    ``lab.status()["services"]``), ``interval`` and ``timeout`` (seconds or durations like
    "1s"). As in Prometheus, the timeout may not exceed the interval. ``max_points`` bounds the
    samples kept per series and ``max_series`` the series kept in all. Each scrape also records ``up`` (1 when the scrape
    succeeded, else 0) and ``scrape_duration_seconds`` for its target. Targets are scraped in
    parallel, so a frozen one does not delay the others. Raises ConfigError for invalid values.
    Use it as a context manager, or call start() and stop(); scrape_once() scrapes on demand.
    """

    def __init__(self, targets: dict[str, str], *, interval: Any = DEFAULT_INTERVAL, timeout: Any = DEFAULT_TIMEOUT,
                 max_points: int = DEFAULT_MAX_POINTS, max_series: int = DEFAULT_MAX_SERIES):
        self.targets = _check_targets(targets)
        self.interval = parse_duration(interval, "interval")
        self.timeout = parse_duration(timeout, "timeout")
        if self.timeout > self.interval:
            raise ConfigError(
                f"timeout={timeout!r} is longer than interval={interval!r}. Use a timeout of at most the "
                "interval, as Prometheus requires of scrape_timeout."
            )
        self.max_points = _check_count("max_points", max_points)
        self.max_series = _check_count("max_series", max_series)

        self._series: dict[_SeriesKey, collections.deque] = {}
        self._health: dict[str, dict] = {}
        self._dropped_series = 0
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._sessions = {name: _session(url) for name, url in self.targets.items()}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def __enter__(self) -> "MetricsScraper":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the scraping thread, unless it is already running."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self.targets), thread_name_prefix="incidentlab-scrape"
        )
        self._thread = threading.Thread(target=self._run, name="incidentlab-metrics-scraper", daemon=True)
        self._thread.start()
        logger.info("metrics scraper started: targets %s, every %.3g s", ", ".join(self.targets), self.interval)

    def stop(self) -> None:
        """Stop scraping and wait for the scrapes in flight, at most one timeout. Calling it again does nothing."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
            logger.info("metrics scraper stopped: %d series kept", len(self._series))
        for session in self._sessions.values():
            session.close()

    def scrape_once(self) -> dict[str, bool]:
        """Scrape every target now, in parallel, and return whether each scrape succeeded (its ``up``)."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(self.targets)) as pool:
            results = dict(zip(self.targets, pool.map(self._scrape, self.targets)))
        return results

    def health(self) -> "pd.DataFrame":
        """Return one row per target, like Prometheus's /api/v1/targets.

        Columns: ``target``, ``url``, ``health`` (up, down, or unknown before the first
        scrape), ``lastError``, ``lastScrape`` (UTC) and ``lastScrapeDuration`` (seconds).
        """
        import pandas as pd

        with self._lock:
            health = dict(self._health)
        rows = []
        for name, url in self.targets.items():
            last = health.get(name)
            row = {"target": name, "url": url, "health": "unknown", "lastError": "",
                   "lastScrape": None, "lastScrapeDuration": None}
            if last is not None:
                row["health"] = "up" if last["ok"] else "down"
                row["lastError"] = last["error"] or ""
                row["lastScrape"] = last["time"]
                row["lastScrapeDuration"] = last["duration"]
            rows.append(row)
        frame = pd.DataFrame(rows)
        frame["lastScrape"] = pd.to_datetime(frame["lastScrape"].astype(float), unit="s", utc=True)
        frame["lastScrapeDuration"] = frame["lastScrapeDuration"].astype(float)
        return frame

    def frame(self, metric: str | None = None, *, flatten: bool = False) -> "pd.DataFrame":
        """Return the kept samples, oldest first, in the columns FRAME_COLUMNS.

        Takes ``metric`` (a sample name such as ``cometbft_consensus_height`` or
        ``..._bucket``; None for all) and ``flatten``, which replaces the ``labels`` dict with
        one column per label name. ``time`` is the UTC start of the scrape.
        """
        import pandas as pd

        rows = [
            {"time": point_time, "target": target, "metric": name, "labels": dict(labels), "value": value}
            for (target, name, labels), points in self._snapshot(metric).items()
            for point_time, value in points
        ]
        frame = pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
        frame["time"] = pd.to_datetime(frame["time"].astype(float), unit="s", utc=True)
        frame["value"] = frame["value"].astype(float)
        frame = frame.sort_values(["time", "target", "metric"], kind="stable", ignore_index=True)
        return _flatten(frame) if flatten else frame

    def latest(self, metric: str) -> "pd.DataFrame":
        """Return the newest value of each live series of ``metric``, like an instant query in PromQL.

        A series is live when the last scrape of its target succeeded and contained it. So a
        stopped target's series drop out, as Prometheus's staleness markers make them do, but
        its ``up`` stays, at 0. Columns: ``target``, one per label, ``time`` (UTC) and ``value``.
        """
        import pandas as pd

        with self._lock:
            health = dict(self._health)
        rows = []
        for (target, _, labels), points in self._snapshot(metric).items():
            last = health.get(target)
            point_time, value = points[-1]
            if last is not None and point_time == last["time"] and (last["ok"] or metric == UP):
                rows.append({"target": target, **dict(labels), "time": point_time, "value": value})
        return _series_frame(pd, rows, ["time", "value"])

    def increase(self, metric: str, window: Any, *, by: str | list[str] | None = None,
                 at: _dt.datetime | float | None = None) -> "pd.DataFrame":
        """Return how much the counter ``metric`` grew within ``window``, like PromQL's increase().

        Takes the sample name, the window (seconds, a timedelta or a duration like "1m"),
        ``by`` (``target`` and label names to sum over, like ``sum by (...)``) and ``at``, the
        end of the window (default now). A drop in value is a counter reset, so the value after
        the drop counts as growth from 0. A series needs two samples in the window. Columns:
        the series labels (or the ``by`` names) and ``value``.
        NOTE: unlike PromQL, the result is not extrapolated to the window's edges, so it is the
        growth between the first and last samples in the window, and reads lower than Prometheus's.
        """
        return self._over_window(metric, window, by, at, per_second=False)

    def rate(self, metric: str, window: Any, *, by: str | list[str] | None = None,
             at: _dt.datetime | float | None = None) -> "pd.DataFrame":
        """Return the per-second growth of the counter ``metric`` within ``window``, like PromQL's rate().

        Takes the same values as increase(), whose growth it divides by the time between the
        first and last samples in the window. Counter resets are handled the same way.
        NOTE: there is no extrapolation to the window's edges, unlike PromQL.
        """
        return self._over_window(metric, window, by, at, per_second=True)

    def _over_window(self, metric: str, window: Any, by: Any, at: Any, *, per_second: bool) -> "pd.DataFrame":
        import pandas as pd

        seconds = parse_duration(window, "window")
        end = _epoch(at)
        rows = []
        for (target, _, labels), points in self._snapshot(metric).items():
            inside = [(t, v) for t, v in points if end - seconds < t <= end]
            if len(inside) < 2:
                continue
            growth = _counter_increase([value for _, value in inside])
            value = growth / (inside[-1][0] - inside[0][0]) if per_second else growth
            rows.append({"target": target, **dict(labels), "value": value})
        frame = _series_frame(pd, rows, ["value"])
        return frame if by is None else _sum_by(frame, by)

    def _snapshot(self, metric: str | None) -> dict[_SeriesKey, list]:
        with self._lock:
            return {key: list(points) for key, points in self._series.items() if metric is None or key[1] == metric}

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stopping.is_set():
            for name in self.targets:
                with self._lock:
                    busy = name in self._in_flight
                    self._in_flight.add(name)
                if busy:
                    logger.debug("target %s: previous scrape still running, skipping this tick", name)
                    continue
                try:
                    self._pool.submit(self._scrape_in_background, name)
                except RuntimeError:
                    # The interpreter is exiting and has shut the pool down: stop scraping quietly.
                    logger.debug("scraper stopped at interpreter exit while scraping %s", name)
                    return

            # A fixed schedule, restarted from now after a stall longer than one interval.
            next_tick += self.interval
            now = time.monotonic()
            next_tick = max(next_tick, now)
            self._stopping.wait(next_tick - now)

    def _scrape_in_background(self, name: str) -> None:
        try:
            self._scrape(name)
        except Exception:
            # Log the bug and go on, so that one broken scrape does not stop the scraper.
            logger.exception("target %s: scrape failed unexpectedly", name)
        finally:
            with self._lock:
                self._in_flight.discard(name)

    def _scrape(self, name: str) -> bool:
        """Scrape one target, record its samples, ``up`` and duration, and return whether it succeeded."""
        started = time.time()
        clock = time.perf_counter()
        samples: list[tuple[str, dict, float]] = []
        error = None
        try:
            response = self._sessions[name].get(self.targets[name], timeout=self.timeout)
            if response.status_code != 200:
                error = f"server returned HTTP status {response.status_code}: {response.text[:ERROR_EXCERPT_CHARS]!r}"
            else:
                # The parser is lazy, so parse errors surface while the families are read here.
                for family in text_string_to_metric_families(response.text):
                    samples.extend((sample.name, sample.labels, sample.value) for sample in family.samples)
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"
        except ValueError as exc:
            error = f"invalid exposition text: {exc}"
            samples = []
        duration = time.perf_counter() - clock

        ok = error is None
        samples.append((UP, {}, 1.0 if ok else 0.0))
        samples.append((SCRAPE_DURATION, {}, duration))
        self._record(name, started, samples, {"time": started, "ok": ok, "error": error, "duration": duration})
        return ok

    def _record(self, name: str, started: float, samples: list, health: dict) -> None:
        with self._lock:
            previous = self._health.get(name)
            self._health[name] = health
            for metric, labels, value in samples:
                key = (name, metric, tuple(sorted(labels.items())))
                points = self._series.get(key)
                if points is None:
                    if len(self._series) >= self.max_series:
                        self._dropped_series += 1
                        continue
                    points = self._series[key] = collections.deque(maxlen=self.max_points)
                points.append((started, float(value)))
            dropped = self._dropped_series
        _log_scrape(name, health, previous, len(samples))
        if dropped and (dropped == 1 or dropped % 1000 == 0):
            logger.warning("series limit max_series=%d reached: %d samples of new series dropped so far",
                           self.max_series, dropped)


def _counter_increase(values: list[float]) -> float:
    """Return the growth of a counter over consecutive samples, treating any drop as a reset to 0."""
    growth = 0.0
    for before, after in zip(values, values[1:]):
        growth += after - before if after >= before else after
    return growth


def _sum_by(frame: "pd.DataFrame", by: str | list[str]) -> "pd.DataFrame":
    """Sum ``value`` over the groups of ``by``, like PromQL's ``sum by (...)``; a missing label is ""."""
    names = [by] if isinstance(by, str) else list(by)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise ConfigError(f"by={by!r} is invalid. Pass a label name such as 'target', or a list of them.")
    frame = frame.copy()
    for name in names:
        frame[name] = frame[name].fillna("") if name in frame else ""
    return frame.groupby(names, as_index=False, sort=True)["value"].sum()


def _series_frame(pd, rows: list[dict], last: list[str]) -> "pd.DataFrame":
    labels = sorted({key for row in rows for key in row} - {"target", *last})
    frame = pd.DataFrame(rows, columns=["target", *labels, *last])
    if "time" in frame:
        frame["time"] = pd.to_datetime(frame["time"].astype(float), unit="s", utc=True)
    frame["value"] = frame["value"].astype(float)
    return frame.sort_values(["target", *labels], ignore_index=True)


def _flatten(frame: "pd.DataFrame") -> "pd.DataFrame":
    import pandas as pd

    labels = pd.DataFrame(list(frame["labels"]), index=frame.index)
    labels = labels[sorted(labels.columns)]
    columns = [name for name in labels.columns if name not in FRAME_COLUMNS]
    return pd.concat([frame[["time", "target", "metric"]], labels[columns], frame[["value"]]], axis=1)


def _epoch(at: Any) -> float:
    if at is None:
        return time.time()
    if isinstance(at, _dt.datetime):
        if at.tzinfo is None:
            raise ConfigError(f"at={at!r} is a naive datetime. Pass an aware one, such as datetime.now(timezone.utc).")
        return at.timestamp()
    if isinstance(at, (int, float)) and not isinstance(at, bool):
        return float(at)
    raise ConfigError(f"at={at!r} is not a time. Pass an aware datetime, Unix seconds, or None for now.")


def _log_scrape(name: str, health: dict, previous: dict | None, count: int) -> None:
    """Log each scrape at DEBUG, and at INFO when the target turns from up to down or back."""
    if health["ok"]:
        logger.debug("target %s: scraped %d samples in %.3f s", name, count, health["duration"])
        if previous is not None and not previous["ok"]:
            logger.info("target %s: scrape succeeds again, up=1", name)
        return
    logger.debug("target %s: scrape failed: %s", name, health["error"])
    if previous is None or previous["ok"]:
        logger.info("target %s: scrape failed, up=0: %s", name, health["error"])


def _check_targets(targets: Any) -> dict[str, str]:
    if not isinstance(targets, dict) or not targets:
        raise ConfigError(
            f"targets={targets!r} is invalid. Pass a dict of target name to metrics URL, such as "
            "{'virtengine-node-0': 'http://127.0.0.1:26660/metrics'}."
        )
    for name, url in targets.items():
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if not isinstance(name, str) or not name or parts is None or parts.scheme not in ("http", "https") \
                or not parts.hostname:
            raise ConfigError(
                f"target {name!r}: {url!r} is not a metrics URL. Use one like http://127.0.0.1:26660/metrics."
            )
    return dict(targets)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ConfigError(f"{name}={value!r} is invalid. Use a whole number of at least 2.")
    return value


def _session(url: str) -> requests.Session:
    session = requests.Session()
    # A proxy from HTTP_PROXY must not swallow requests to the lab's own loopback services.
    if urllib.parse.urlsplit(url).hostname in _LOOPBACK_HOSTS:
        session.trust_env = False
    return session

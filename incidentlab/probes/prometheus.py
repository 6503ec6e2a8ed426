"""Prometheus HTTP API client: instant and range queries, alerts and targets as pandas DataFrames.

Talks HTTP to a Prometheus server (the lab's listens on 127.0.0.1:9095) and raises PrometheusError on failure.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import urllib.parse
from typing import TYPE_CHECKING, Any

import requests

from ..errors import ConfigError, ProbeError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PrometheusClient", "PrometheusError", "parse_duration"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
START_HINT = "Start it with `incidentlab lab up --prometheus`, or check the URL."
#: errorType values for failures seen by the client, beside Prometheus's own (bad_data, execution, ...).
CONNECTION_REFUSED = "connection_refused"
CLIENT_TIMEOUT = "client_timeout"
CONNECTION_FAILED = "connection"
BAD_RESPONSE = "bad_response"
#: Characters of a response body quoted in an error message.
BODY_EXCERPT_CHARS = 200
#: Next step for each errorType of the Prometheus HTTP API, appended to the error message.
_ERROR_HINTS = {
    "bad_data": "Fix the PromQL expression or the parameter that the error names (syntax, label "
    "matchers, durations such as 5m, start before end, step above 0).",
    "execution": "The expression is valid but cannot be evaluated. For a many-to-many match, add on() "
    "or ignoring() with group_left() or group_right(); otherwise select fewer series.",
    "timeout": "The query ran longer than Prometheus's --query.timeout. Query a shorter range, a larger "
    "step or fewer series.",
    "canceled": "Prometheus canceled the query because it is shutting down or the client went away. Retry.",
    "unavailable": "Prometheus is starting or shutting down. Wait until GET /-/ready returns 200.",
    "internal": "Prometheus failed while serving the request. Read its log.",
    "not_found": "Check the API path.",
}
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_DURATION_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)
#: Columns of alerts() after the labels.
_ALERT_COLUMNS = ("state", "activeAt", "value", "summary", "description", "annotations")
#: Sample columns; a label with one of these names gets the prefix "label_".
_RESERVED = ("timestamp", "value")


class PrometheusError(ProbeError):
    """Prometheus returned an error, or could not be reached.

    ``error_type`` is the API's errorType (bad_data, execution, timeout, canceled, unavailable,
    internal, not_found), or one of connection_refused, client_timeout, connection and
    bad_response for failures seen by the client. ``expression`` is the PromQL expression of
    the request (None for other endpoints), and ``status`` the HTTP status (None without one).
    """

    def __init__(self, url: str, message: str, *, error_type: str, expression: str | None = None,
                 status: int | None = None):
        self.error_type = error_type
        self.expression = expression
        self.status = status
        super().__init__(url, message)


class PrometheusClient:
    """Client of the Prometheus HTTP API, like `curl http://127.0.0.1:9095/api/v1/query?query=up`.

    Takes the server's base URL and the request timeout in seconds. Every method but ready()
    raises PrometheusError on failure. Raises ConfigError for an invalid URL or timeout.
    Use it as a context manager, or call close(), so that its pooled sockets are closed.
    """

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT):
        self.url = _normalize_url(url)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ConfigError(f"timeout={timeout!r} is invalid. Use a number of seconds above 0, such as 5.")
        self.timeout = float(timeout)
        self._session = requests.Session()

        # A proxy from HTTP_PROXY must not swallow requests to the lab's own loopback Prometheus.
        if urllib.parse.urlsplit(self.url).hostname in _LOOPBACK_HOSTS:
            self._session.trust_env = False

    def __repr__(self) -> str:
        return f"PrometheusClient({self.url!r}, timeout={self.timeout})"

    def __enter__(self) -> "PrometheusClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections. Calling it again does nothing."""
        self._session.close()

    def ready(self) -> bool:
        """Return whether `GET /-/ready` returns 200, so that the server can serve queries.

        A 503 (still starting), a refused connection or a timeout all return False.
        """
        try:
            response = self._session.get(self.url + "/-/ready", timeout=self.timeout)
        except requests.RequestException as exc:
            logger.debug("%s/-/ready: %s", self.url, exc)
            return False
        return response.status_code == 200

    def query(self, expr: str, time: Any = None) -> "pd.DataFrame":
        """Evaluate an instant query, like `GET /api/v1/query?query=EXPR&time=T`.

        Takes the PromQL expression and the evaluation time (an aware datetime, Unix seconds or
        an RFC 3339 string; None means now). Returns one row per series: the labels as
        columns, then ``timestamp`` (UTC) and ``value`` (float). A range-vector expression
        such as ``up[1m]`` returns one row per sample, as query_range() does. The API's
        warnings are in ``frame.attrs["warnings"]``. Raises PrometheusError.
        """
        params = {"query": _check_expression(expr)}
        if time is not None:
            params["time"] = _format_time(time, "time")
        data, warnings = self._call("/api/v1/query", params, expr)
        return _result_frame(data, warnings, self._label("/api/v1/query"), expr)

    def query_range(self, expr: str, start: Any, end: Any, step: Any) -> "pd.DataFrame":
        """Evaluate a range query, like `GET /api/v1/query_range?query=EXPR&start=&end=&step=`.

        Takes the expression, ``start`` and ``end`` (aware datetimes, Unix seconds or RFC 3339
        strings) and ``step`` (seconds, a timedelta or a duration such as "15s"). Returns the
        long form: one row per sample, with the labels, ``timestamp`` (UTC) and ``value``.
        Raises ConfigError for an invalid step, PrometheusError for the rest.
        """
        params = {
            "query": _check_expression(expr),
            "start": _format_time(start, "start"),
            "end": _format_time(end, "end"),
            "step": f"{parse_duration(step, 'step'):g}",
        }
        data, warnings = self._call("/api/v1/query_range", params, expr)
        return _result_frame(data, warnings, self._label("/api/v1/query_range"), expr)

    def alerts(self) -> "pd.DataFrame":
        """Return the pending and firing alerts, like `GET /api/v1/alerts`.

        One row per alert: its labels as columns (alertname, severity, ...), then ``state``
        (pending or firing), ``activeAt`` (UTC), ``value`` (float), ``summary`` and
        ``description`` from the annotations, and ``annotations`` (a dict of all of them).
        Raises PrometheusError.
        """
        import pandas as pd

        data, _ = self._call("/api/v1/alerts", None, None)
        rows = []
        for alert in _field(data, "alerts", list, self._label("/api/v1/alerts")):
            annotations = dict(alert.get("annotations") or {})
            rows.append({
                **_label_columns(alert.get("labels") or {}),
                "state": alert.get("state"),
                "activeAt": alert.get("activeAt"),
                "value": _to_float(alert.get("value")),
                "summary": annotations.get("summary"),
                "description": annotations.get("description"),
                "annotations": annotations,
            })
        labels = sorted({key for row in rows for key in row} - set(_ALERT_COLUMNS) - {"alertname"})
        frame = pd.DataFrame(rows, columns=["alertname", *labels, *_ALERT_COLUMNS])
        frame["activeAt"] = _to_utc(frame["activeAt"])
        return frame

    def targets(self) -> "pd.DataFrame":
        """Return the active scrape targets, like `GET /api/v1/targets?state=active`.

        One row per target: ``job``, ``instance``, ``health`` (up, down or unknown),
        ``lastError`` (empty when the last scrape succeeded), ``lastScrape`` (UTC, NaT before
        the first scrape), ``lastScrapeDuration`` (seconds) and ``scrapeUrl``. Raises PrometheusError.
        """
        import pandas as pd

        data, _ = self._call("/api/v1/targets", {"state": "active"}, None)
        rows = []
        for target in _field(data, "activeTargets", list, self._label("/api/v1/targets")):
            labels = target.get("labels") or {}
            rows.append({
                "job": labels.get("job"),
                "instance": labels.get("instance"),
                "health": target.get("health"),
                "lastError": target.get("lastError", ""),
                "lastScrape": target.get("lastScrape"),
                "lastScrapeDuration": _to_float(target.get("lastScrapeDuration")),
                "scrapeUrl": target.get("scrapeUrl"),
            })
        columns = ["job", "instance", "health", "lastError", "lastScrape", "lastScrapeDuration", "scrapeUrl"]
        frame = pd.DataFrame(rows, columns=columns)
        frame["lastScrape"] = _to_utc(frame["lastScrape"])
        return frame.sort_values(["job", "instance"], ignore_index=True)

    def _label(self, path: str) -> str:
        return self.url + path

    def _call(self, path: str, params: dict | None, expr: str | None) -> tuple[Any, list[str]]:
        """Send one request and return the envelope's ``data`` and ``warnings``.

        A query goes as a POST form, which the API accepts like GET, so that a long
        expression does not hit a URL length limit.
        """
        label = self._label(path)
        try:
            if expr is None:
                response = self._session.get(label, params=params, timeout=self.timeout)
            else:
                response = self._session.post(label, data=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise _connection_error(exc, label, expr, self.timeout) from exc
        logger.debug("%s query=%r -> HTTP %d", label, expr, response.status_code)

        body = _json_or_none(response)
        if response.status_code == 200 and isinstance(body, dict) and body.get("status") == "success":
            warnings = [str(warning) for warning in body.get("warnings") or []]
            for warning in warnings:
                logger.warning("Prometheus warning for %s query=%r: %s", label, expr, warning)
            return body.get("data"), warnings
        raise _response_error(response, body, label, expr)


def parse_duration(value: Any, name: str = "duration") -> float:
    """Return a duration in seconds from seconds, a timedelta or a Prometheus duration string.

    Strings follow Prometheus's duration format: units y, w, d, h, m, s and ms from largest to
    smallest, such as "90s", "1m30s" or "500ms". Raises ConfigError naming ``name`` and the
    value when it is not a duration above 0.
    """
    if isinstance(value, _dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value and (match := _DURATION.match(value.strip())):
        seconds = sum(int(count) * unit for count, unit in zip(match.groups(), _DURATION_UNITS) if count)
    else:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(
            f"{name}={value!r} is not a duration above 0. Use seconds (15), a timedelta, "
            'or a Prometheus duration such as "15s", "1m30s" or "500ms".'
        )
    return seconds


def _normalize_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"url={url!r} is not an HTTP URL of a Prometheus server. Pass one like http://127.0.0.1:9095."
        )
    return url.rstrip("/")


def _check_expression(expr: Any) -> str:
    if not isinstance(expr, str) or not expr.strip():
        raise ConfigError(f"expr={expr!r} is not a PromQL expression. Pass a non-empty string such as 'up'.")
    return expr


def _format_time(value: Any, name: str) -> str:
    """Return an API time parameter (Unix seconds as text) from a datetime, a number or a string."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise ConfigError(
                f"{name}={value!r} is a naive datetime. Pass an aware one, such as datetime.now(timezone.utc)."
            )
        return f"{value.timestamp():.3f}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{float(value):.3f}"
    if isinstance(value, str) and value.strip():
        return value.strip()  # RFC 3339 or Unix seconds, which Prometheus parses itself
    raise ConfigError(
        f"{name}={value!r} is not a time. Pass an aware datetime, Unix seconds, or an RFC 3339 string."
    )


def _connection_error(exc: requests.RequestException, label: str, expr: str | None, timeout: float) -> PrometheusError:
    address = urllib.parse.urlsplit(label).netloc
    subject = f" for query {expr!r}" if expr is not None else ""
    if _refused(exc):
        return PrometheusError(
            label, f"connection refused by {address} ({label}): Prometheus is not running there. {START_HINT}",
            error_type=CONNECTION_REFUSED, expression=expr,
        )
    if isinstance(exc, requests.Timeout):
        return PrometheusError(
            label, f"{label} sent no response within {timeout} s{subject}. Prometheus is frozen "
            "or overloaded: check it with GET /-/ready, or pass a longer timeout.",
            error_type=CLIENT_TIMEOUT, expression=expr,
        )
    return PrometheusError(
        label, f"request to {label} failed: {exc}. Check that Prometheus is running. {START_HINT}",
        error_type=CONNECTION_FAILED, expression=expr,
    )


def _refused(exc: BaseException) -> bool:
    """Return whether a ConnectionRefusedError is among the exceptions that ``exc`` wraps."""
    pending, seen = [exc], []
    while pending:
        current = pending.pop()
        if isinstance(current, ConnectionRefusedError):
            return True
        if any(current is known for known in seen):
            continue
        seen.append(current)
        # requests and urllib3 keep the cause in args and in ``reason``, besides __cause__.
        wrapped = [*current.args, getattr(current, "reason", None), current.__cause__, current.__context__]
        pending.extend(item for item in wrapped if isinstance(item, BaseException))
    return False


def _response_error(response: requests.Response, body: Any, label: str, expr: str | None) -> PrometheusError:
    status = response.status_code
    subject = f"query {expr!r}" if expr is not None else label
    if isinstance(body, dict) and body.get("status") == "error":
        error_type = str(body.get("errorType") or "unknown")
        hint = _ERROR_HINTS.get(error_type, "Read the error and Prometheus's log.")
        return PrometheusError(
            label, f"Prometheus rejected {subject} with HTTP {status} ({error_type}): {body.get('error')}. {hint}",
            error_type=error_type, expression=expr, status=status,
        )

    # Prometheus returns 503 with a plain-text body while it starts or shuts down.
    excerpt = response.text[:BODY_EXCERPT_CHARS]
    if status == 503:
        return PrometheusError(
            label, f"{label} returned HTTP 503 ({excerpt!r}) for {subject}. {_ERROR_HINTS['unavailable']}",
            error_type="unavailable", expression=expr, status=status,
        )
    return PrometheusError(
        label, f"{label} returned HTTP {status} with a body that is not a Prometheus API response: "
        f"{excerpt!r}. Check that the URL points at a Prometheus server.",
        error_type=BAD_RESPONSE, expression=expr, status=status,
    )


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _field(data: Any, key: str, kind: type, label: str) -> Any:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, kind):
        raise PrometheusError(
            label, f"{label} returned data without a {kind.__name__} {key!r}: {repr(data)[:BODY_EXCERPT_CHARS]}. "
            "Check that the URL points at a Prometheus server.",
            error_type=BAD_RESPONSE,
        )
    return value


def _result_frame(data: Any, warnings: list[str], label: str, expr: str) -> "pd.DataFrame":
    """Turn a query result (vector, matrix, scalar or string) into a DataFrame."""
    import pandas as pd

    result_type = data.get("resultType") if isinstance(data, dict) else None
    result = _field(data, "result", list, label) if result_type in ("vector", "matrix") else None
    if result_type == "vector":
        rows = [{**_label_columns(series.get("metric") or {}), **_sample(series, label, expr)} for series in result]
    elif result_type == "matrix":
        rows = [
            {**_label_columns(series.get("metric") or {}), "timestamp": float(ts), "value": _to_float(value)}
            for series in result for ts, value in series.get("values") or []
        ]
    elif result_type in ("scalar", "string"):
        timestamp, value = data["result"]
        rows = [{"timestamp": float(timestamp), "value": _to_float(value) if result_type == "scalar" else value}]
    else:
        raise PrometheusError(
            label, f"{label} returned resultType {result_type!r} for query {expr!r}; expected vector, matrix, "
            "scalar or string. Check that the URL points at a Prometheus server.",
            error_type=BAD_RESPONSE, expression=expr,
        )

    frame = pd.DataFrame(rows, columns=_series_columns(rows))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"].astype(float), unit="s", utc=True)
    frame.attrs["warnings"] = warnings
    frame.attrs["resultType"] = result_type
    return frame


def _sample(series: dict, label: str, expr: str) -> dict:
    if "value" not in series:
        # NOTE: native histogram samples ("histogram" in place of "value") are not parsed.
        raise PrometheusError(
            label, f"query {expr!r} returned a series without a value: {repr(series)[:BODY_EXCERPT_CHARS]}. "
            "Native histograms are not supported; query the classic _bucket, _sum and _count series.",
            error_type=BAD_RESPONSE, expression=expr,
        )
    timestamp, value = series["value"]
    return {"timestamp": float(timestamp), "value": _to_float(value)}


def _label_columns(labels: dict) -> dict:
    return {(f"label_{key}" if key in _RESERVED else key): value for key, value in labels.items()}


def _series_columns(rows: list[dict]) -> list[str]:
    """Return the columns of a query result: __name__ when present, the other labels sorted, timestamp, value."""
    labels = sorted({key for row in rows for key in row} - {"__name__", *_RESERVED})
    name = ["__name__"] if any("__name__" in row for row in rows) else []
    return [*name, *labels, *_RESERVED]


def _to_float(value: Any) -> float:
    # Prometheus sends sample values as strings, including "NaN", "+Inf" and "-Inf".
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _to_utc(column: "pd.Series") -> "pd.Series":
    import pandas as pd

    times = pd.to_datetime(column, utc=True, format="ISO8601", errors="coerce")
    # Prometheus writes Go's zero time, 0001-01-01T00:00:00Z, for "never" (a target not scraped yet).
    return times.mask(times.dt.year == 1)

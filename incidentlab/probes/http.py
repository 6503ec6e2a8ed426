"""HTTP status sampling: the lab document's ``curl -s -o /dev/null -w "%{http_code}"`` loop, as a table."""

from __future__ import annotations

import datetime as _dt
import logging
import time

import requests

from ..errors import ConfigError

__all__ = ["probe_http", "sample_http", "HTTP_COLUMNS"]

logger = logging.getLogger(__name__)

HTTP_COLUMNS = ["time", "url", "code", "latency_s", "error"]


def probe_http(session: requests.Session, url: str, timeout: float) -> dict:
    """Send one GET and return {time, url, code, latency_s, error}; never raises for a failed request.

    ``code`` is the HTTP status, or 0 when no response arrived (curl prints 000). ``error`` is
    None, "refused", "timeout", "reset" or "connection".
    """
    started = time.perf_counter()
    code, error = 0, None
    try:
        response = session.get(url, timeout=timeout)
        code = response.status_code
    except requests.exceptions.Timeout:
        error = "timeout"
    except requests.exceptions.ConnectionError as exc:
        text = str(exc).lower()
        error = "connection"
        if "refused" in text:
            error = "refused"
        elif "reset" in text:
            error = "reset"
    return {"time": _dt.datetime.now(_dt.timezone.utc), "url": url, "code": code,
            "latency_s": time.perf_counter() - started, "error": error}


def sample_http(url: str, *, count: int = 10, interval: float = 1.0, timeout: float = 2.0):
    """GET ``url`` ``count`` times, ``interval`` seconds apart, and return a DataFrame in HTTP_COLUMNS.

    Raises ConfigError for a count, interval or timeout out of range, or a URL that is not on
    127.0.0.1 (the lab only ever probes its own loopback services).
    """
    import pandas as pd

    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 10_000:
        raise ConfigError(f"count={count!r} is invalid; use a whole number from 1 to 10000")
    for name, value in (("interval", interval), ("timeout", timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 300:
            raise ConfigError(f"{name}={value!r} is out of range; give seconds above 0, at most 300")
    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise ConfigError(f"url={url!r} is not an http:// URL on 127.0.0.1 or localhost; the lab probes only "
                          "its own services, like http://127.0.0.1:PORT/...")

    rows = []
    started = time.monotonic()
    with requests.Session() as session:
        for index in range(count):
            time.sleep(max(0.0, started + index * interval - time.monotonic()))
            sample = probe_http(session, url, timeout)
            logger.debug("GET %s -> %s (%s) in %.3f s", url, sample["code"], sample["error"], sample["latency_s"])
            rows.append(sample)
    return pd.DataFrame(rows, columns=HTTP_COLUMNS)

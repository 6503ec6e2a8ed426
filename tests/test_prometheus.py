"""Monitoring: the alert rules under promtool, the Prometheus API client against an HTTP stub on
127.0.0.1, the /metrics scraper against a real localnet, and a real Prometheus scraping it.

The promtool and Prometheus tests skip when the binaries are missing, except when CI=true: then
they fail, because CI must run them (`bash .ci/prometheus-setup.sh` installs both).
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest
import yaml

from incidentlab import Lab
from incidentlab.errors import ConfigError, IncidentLabError, ProbeError
from incidentlab.monitoring import JOB_VALIDATORS, PrometheusServer, PrometheusServerError, scrape_targets
from incidentlab.probes.prometheus import PrometheusClient, PrometheusError, parse_duration
from incidentlab.probes.scrape import FRAME_COLUMNS, MetricsScraper

RULES_DIR = Path(__file__).resolve().parent.parent / "data" / "alerts"
TARGET = "virtengine-node-2"
#: Maximum time that a hanging stub handler waits, in case a test never releases it.
MAX_HANG_S = 10.0
#: Prometheus 2.42 scraped new targets about 6 s after its start here, so allow for more.
TARGETS_TIMEOUT = 30.0


def require_binary(name: str) -> str:
    """Return the path of ``name``; skip without it, but fail when CI=true, because CI must run these tests."""
    path = shutil.which(name)
    if path is not None:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is not on PATH and CI=true: run `bash .ci/prometheus-setup.sh` as root first", pytrace=False)
    pytest.skip(f"{name} is not installed; install it with `apt-get install -y prometheus`")


def wait_for(condition, timeout: float = 10.0, interval: float = 0.1):
    """Poll ``condition`` until it returns a truthy value, and return that value; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout} s")


# --- (a) alert rules under promtool ------------------------------------------------------------


def test_rules_pass_promtool_check():
    promtool = require_binary("promtool")
    files = sorted(str(path) for path in RULES_DIR.glob("*.yml"))
    assert files, f"no rule files in {RULES_DIR}"
    result = subprocess.run([promtool, "check", "rules", *files], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_rules_have_required_fields():
    rules = [rule for group in yaml.safe_load((RULES_DIR / "virtengine.rules.yml").read_text())["groups"]
             for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert names == {"HighErrorRatio", "ChainHalted", "ChainSlow", "ValidatorMissing", "TargetDown",
                     "VeidScoreDrop", "VeidScoringErrors", "DeploymentsFailingToCreate"}
    for rule in rules:
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


# Series and expected alerts for `promtool test rules`. Each case evaluates one alert at one time;
# exp_alerts lists the firing alerts (pending ones are not listed). Steps are 15 s.
RULE_CASES = [
    ("ChainHalted", "3m", ['cometbft_consensus_latest_block_height{chain_id="c",instance="a:1",job="v"}', "5x20"],
     [{"chain_id": "c", "severity": "critical"}]),
    ("ChainHalted", "3m", ['cometbft_consensus_latest_block_height{chain_id="c",instance="a:1",job="v"}', "1+1x20"], []),
    ("HighErrorRatio", "3m", ['http_requests_total{code="200",job="gw"}', "0+90x20",
                              'http_requests_total{code="502",job="gw"}', "0+10x20"],
     [{"job": "gw", "severity": "critical"}]),
    ("HighErrorRatio", "3m", ['http_requests_total{code="200",job="gw"}', "0+99x20",
                              'http_requests_total{code="502",job="gw"}', "0+1x20"], []),
    ("ChainSlow", "8m", ['cometbft_consensus_block_interval_seconds_sum{chain_id="c",instance="a:1",job="v"}', "0+5x40",
                         'cometbft_consensus_block_interval_seconds_count{chain_id="c",instance="a:1",job="v"}', "0+1x40"],
     [{"chain_id": "c", "instance": "a:1", "job": "v", "severity": "warning"}]),
    ("ChainSlow", "8m", ['cometbft_consensus_block_interval_seconds_sum{chain_id="c",instance="a:1",job="v"}', "0+1x40",
                         'cometbft_consensus_block_interval_seconds_count{chain_id="c",instance="a:1",job="v"}', "0+1x40"], []),
    ("ValidatorMissing", "3m", ['cometbft_consensus_missing_validators{chain_id="c",instance="a:1",job="v"}', "1x20"],
     [{"chain_id": "c", "severity": "warning"}]),
    ("ValidatorMissing", "3m", ['cometbft_consensus_missing_validators{chain_id="c",instance="a:1",job="v"}',
                                "0 1 0 1 0 1 0 1 0 1 0 1 0 1 0"], []),
    # Down from 30 s on: pending at 45 s, firing once `for: 30s` has passed.
    ("TargetDown", "45s", ['up{instance="a:1",job="v"}', "1 1 0x10"], []),
    ("TargetDown", "90s", ['up{instance="a:1",job="v"}', "1 1 0x10"],
     [{"instance": "a:1", "job": "v", "severity": "warning"}]),
    ("VeidScoreDrop", "3m", ['virtengine_veid_scoring_score_avg{instance="veid:1",job="veid"}', "0.5x20"],
     [{"instance": "veid:1", "job": "veid", "severity": "warning"}]),
    ("VeidScoreDrop", "3m", ['virtengine_veid_scoring_score_avg{instance="veid:1",job="veid"}', "0.9x20"], []),
    ("DeploymentsFailingToCreate", "3m",
     ['virtengine_provider_deployments_failed_create_total{instance="p:1",job="provider"}', "0 0 1 1 2 2 2 2 2 2 2 2"],
     [{"instance": "p:1", "job": "provider", "severity": "warning"}]),
    ("DeploymentsFailingToCreate", "3m",
     ['virtengine_provider_deployments_failed_create_total{instance="p:1",job="provider"}', "0x12"], []),
]


def test_rules_fire_on_promtool_series(tmp_path):
    promtool = require_binary("promtool")

    # promtool compares annotations too, so test a copy without them. These cases check the
    # expressions and `for:` durations, and `promtool check rules` already checks the templates.
    rules = yaml.safe_load((RULES_DIR / "virtengine.rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))

    tests = []
    for alertname, eval_time, series, expected in RULE_CASES:
        input_series = [{"series": name, "values": values} for name, values in zip(series[::2], series[1::2])]
        exp_alerts = [{"exp_labels": {"alertname": alertname, **labels}} for labels in expected]
        tests.append({"interval": "15s", "input_series": input_series,
                      "alert_rule_test": [{"eval_time": eval_time, "alertname": alertname, "exp_alerts": exp_alerts}]})
    spec = {"rule_files": [str(tmp_path / "rules.yml")], "evaluation_interval": "15s", "tests": tests}
    (tmp_path / "rules_test.yml").write_text(yaml.safe_dump(spec, sort_keys=False))

    result = subprocess.run([promtool, "test", "rules", str(tmp_path / "rules_test.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# --- (b) the API client against an HTTP stub ---------------------------------------------------

HANG = "hang"


class PrometheusStub:
    """An HTTP server on 127.0.0.1 that returns, for each path, the response that the test sets.

    ``responses[path]`` is ``(status, body, content_type)``: a dict body is sent as JSON, a str
    as is. HANG accepts the request and responds only after close() or MAX_HANG_S. Requests
    are recorded in ``requests`` as dicts with method, path and params (query string and form).
    """

    def __init__(self) -> None:
        self.responses: dict[str, object] = {}
        self.requests: list[dict] = []
        self.released = threading.Event()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                stub._answer(self, "")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                stub._answer(self, self.rfile.read(length).decode())

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def _answer(self, handler, form: str) -> None:
        parts = urllib.parse.urlsplit(handler.path)
        params = dict(urllib.parse.parse_qsl(parts.query))
        params.update(urllib.parse.parse_qsl(form))
        self.requests.append({"method": handler.command, "path": parts.path, "params": params})
        response = self.responses.get(parts.path, (404, "404 page not found\n", "text/plain"))
        if response == HANG:
            self.released.wait(MAX_HANG_S)
            response = (200, {"status": "success", "data": {"resultType": "vector", "result": []}}, "application/json")
        status, body, content_type = response
        raw = (json.dumps(body) if isinstance(body, dict) else body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)

    def success(self, path: str, data: dict, warnings: list[str] | None = None) -> None:
        body = {"status": "success", "data": data}
        if warnings:
            body["warnings"] = warnings
        self.responses[path] = (200, body, "application/json")

    def error(self, path: str, status: int, error_type: str, message: str) -> None:
        body = {"status": "error", "errorType": error_type, "error": message}
        self.responses[path] = (status, body, "application/json")

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    server = PrometheusStub()
    yield server
    server.close()


@pytest.fixture
def closed_port():
    """A 127.0.0.1 port that is bound but not listening, so every connection is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def test_query_vector_to_frame(stub):
    stub.success("/api/v1/query", {"resultType": "vector", "result": [
        {"metric": {"__name__": "up", "job": "virtengine-validators", "instance": "127.0.0.1:26660"},
         "value": [1714564800.5, "1"]},
        {"metric": {"__name__": "up", "job": "virtengine-validators", "instance": "127.0.0.1:26661"},
         "value": [1714564800.5, "NaN"]},
        {"metric": {"job": "x", "value": "label-named-value"}, "value": [1714564800.5, "+Inf"]},
    ]}, warnings=["PromQL info: metric might not be a counter"])
    at = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    with PrometheusClient(stub.url) as client:
        frame = client.query("up", time=at)

    assert stub.requests[-1]["method"] == "POST"
    assert stub.requests[-1]["params"] == {"query": "up", "time": f"{at.timestamp():.3f}"}
    assert list(frame.columns) == ["__name__", "instance", "job", "label_value", "timestamp", "value"]
    assert frame["value"].iloc[0] == 1.0
    assert pd.isna(frame["value"].iloc[1])
    assert frame["value"].iloc[2] == float("inf")
    assert frame["label_value"].iloc[2] == "label-named-value"
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2024-05-01T12:00:00.5", tz="UTC")
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert frame.attrs["warnings"] == ["PromQL info: metric might not be a counter"]
    assert frame.attrs["resultType"] == "vector"


def test_query_empty_and_scalar(stub):
    stub.success("/api/v1/query", {"resultType": "vector", "result": []})
    with PrometheusClient(stub.url) as client:
        empty = client.query("up == 2")
        stub.success("/api/v1/query", {"resultType": "scalar", "result": [1714564800, "4"]})
        scalar = client.query("scalar(count(up))")
    assert list(empty.columns) == ["timestamp", "value"]
    assert empty.empty
    assert scalar["value"].tolist() == [4.0]


def test_query_range_long_form(stub):
    stub.success("/api/v1/query_range", {"resultType": "matrix", "result": [
        {"metric": {"instance": "a:1"}, "values": [[100, "5"], [101, "6"]]},
        {"metric": {"instance": "b:1"}, "values": [[100, "7"]]},
    ]})
    with PrometheusClient(stub.url) as client:
        frame = client.query_range("cometbft_consensus_height", 100, 101.5, "500ms")

    assert stub.requests[-1]["params"] == {
        "query": "cometbft_consensus_height", "start": "100.000", "end": "101.500", "step": "0.5"}
    assert list(frame.columns) == ["instance", "timestamp", "value"]
    assert frame["instance"].tolist() == ["a:1", "a:1", "b:1"]
    assert frame["value"].tolist() == [5.0, 6.0, 7.0]
    assert frame["timestamp"].iloc[1] == pd.Timestamp(101, unit="s", tz="UTC")


def test_bad_data_error_names_expression(stub):
    stub.error("/api/v1/query", 400, "bad_data",
               'invalid parameter "query": 1:5: parse error: unexpected "}" in label matching')
    with PrometheusClient(stub.url) as client, pytest.raises(PrometheusError) as caught:
        client.query("up{}}")
    error = caught.value
    assert isinstance(error, ProbeError)
    assert isinstance(error, IncidentLabError)
    assert error.error_type == "bad_data"
    assert error.expression == "up{}}"
    assert error.status == 400
    assert "'up{}}'" in str(error)
    assert "parse error" in str(error)
    assert "Fix the PromQL expression" in str(error)


def test_execution_error_422(stub):
    stub.error("/api/v1/query", 422, "execution", "found duplicate series for the match group")
    with PrometheusClient(stub.url) as client, pytest.raises(PrometheusError) as caught:
        client.query("a * b")
    assert caught.value.error_type == "execution"
    assert caught.value.status == 422
    assert "group_left()" in str(caught.value)


def test_timeout_error_503(stub):
    stub.error("/api/v1/query_range", 503, "timeout", "query timed out in expression evaluation")
    with PrometheusClient(stub.url) as client, pytest.raises(PrometheusError) as caught:
        client.query_range("rate(up[5m])", 0, 3600, 1)
    assert caught.value.error_type == "timeout"
    assert caught.value.status == 503
    assert caught.value.expression == "rate(up[5m])"
    assert "shorter range" in str(caught.value)


def test_starting_server_503_plain_text(stub):
    stub.responses["/api/v1/query"] = (503, "Service Unavailable", "text/plain")
    with PrometheusClient(stub.url) as client, pytest.raises(PrometheusError) as caught:
        client.query("up")
    assert caught.value.error_type == "unavailable"
    assert "/-/ready" in str(caught.value)


def test_non_prometheus_answer(stub):
    stub.responses["/api/v1/query"] = (200, "<html>hello</html>", "text/html")
    with PrometheusClient(stub.url) as client, pytest.raises(PrometheusError) as caught:
        client.query("up")
    assert caught.value.error_type == "bad_response"
    assert "<html>hello</html>" in str(caught.value)


def test_refused_says_how_to_start(closed_port):
    with PrometheusClient(f"http://127.0.0.1:{closed_port}", timeout=1) as client:
        assert client.ready() is False
        with pytest.raises(PrometheusError) as caught:
            client.query("up")
    assert caught.value.error_type == "connection_refused"
    assert caught.value.expression == "up"
    assert "Prometheus is not running" in str(caught.value)
    assert "incidentlab lab up --prometheus" in str(caught.value)


def test_client_read_timeout(stub):
    stub.responses["/api/v1/query"] = HANG
    with PrometheusClient(stub.url, timeout=0.3) as client, pytest.raises(PrometheusError) as caught:
        client.query("up")
    assert caught.value.error_type == "client_timeout"
    assert "0.3 s" in str(caught.value)


def test_ready_follows_status(stub):
    with PrometheusClient(stub.url) as client:
        stub.responses["/-/ready"] = (503, "Service Unavailable", "text/plain")
        assert client.ready() is False
        stub.responses["/-/ready"] = (200, "Prometheus Server is Ready.\n", "text/plain")
        assert client.ready() is True


def test_alerts_and_targets_frames(stub):
    stub.success("/api/v1/alerts", {"alerts": [{
        "labels": {"alertname": "TargetDown", "instance": "127.0.0.1:26662", "job": JOB_VALIDATORS,
                   "severity": "warning"},
        "annotations": {"summary": "down", "description": "refused"},
        "state": "firing", "activeAt": "2024-05-01T12:00:00.123456789+02:00", "value": "0e+00"}]})
    stub.success("/api/v1/targets", {"activeTargets": [
        {"labels": {"job": JOB_VALIDATORS, "instance": "127.0.0.1:26661"}, "health": "unknown",
         "lastError": "", "lastScrape": "0001-01-01T00:00:00Z", "lastScrapeDuration": 0,
         "scrapeUrl": "http://127.0.0.1:26661/metrics"},
        {"labels": {"job": JOB_VALIDATORS, "instance": "127.0.0.1:26660"}, "health": "down",
         "lastError": "connection refused", "lastScrape": "2024-05-01T12:00:01.5Z", "lastScrapeDuration": 0.0012,
         "scrapeUrl": "http://127.0.0.1:26660/metrics"}], "droppedTargets": []})
    with PrometheusClient(stub.url) as client:
        alerts = client.alerts()
        targets = client.targets()

    assert alerts.columns[0] == "alertname"
    assert alerts.loc[0, "state"] == "firing"
    assert alerts.loc[0, "instance"] == "127.0.0.1:26662"
    assert alerts.loc[0, "activeAt"] == pd.Timestamp("2024-05-01T10:00:00.123456789", tz="UTC")
    assert alerts.loc[0, "value"] == 0.0
    assert alerts.loc[0, "summary"] == "down"
    assert stub.requests[-1]["params"] == {"state": "active"}
    assert targets["instance"].tolist() == ["127.0.0.1:26660", "127.0.0.1:26661"]
    assert targets["health"].tolist() == ["down", "unknown"]
    assert targets.loc[0, "lastError"] == "connection refused"
    assert pd.isna(targets.loc[1, "lastScrape"])


def test_client_rejects_bad_values(stub):
    with pytest.raises(ConfigError, match=r"url='127.0.0.1:9095'.*http://127.0.0.1:9095"):
        PrometheusClient("127.0.0.1:9095")
    with pytest.raises(ConfigError, match=r"timeout=0"):
        PrometheusClient(stub.url, timeout=0)
    with PrometheusClient(stub.url) as client:
        with pytest.raises(ConfigError, match=r"expr=''"):
            client.query("")
        with pytest.raises(ConfigError, match=r"naive datetime"):
            client.query("up", time=dt.datetime(2024, 5, 1))
        with pytest.raises(ConfigError, match=r"step='1 minute'.*\"15s\""):
            client.query_range("up", 0, 60, "1 minute")
    assert stub.requests == []


def test_parse_duration_forms():
    assert parse_duration("1m30s") == 90
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2h") == 7200
    assert parse_duration(2.5) == 2.5
    assert parse_duration(dt.timedelta(minutes=1)) == 60
    for bad in ("", "5 m", "1s1m", 0, -1, True, None):
        with pytest.raises(ConfigError):
            parse_duration(bad, "window")


# --- (c) the /metrics scraper ----------------------------------------------------------------


def exposition(counter: float) -> str:
    return (
        "# HELP virtengine_test_requests_total Requests served.\n"
        "# TYPE virtengine_test_requests_total counter\n"
        f'virtengine_test_requests_total{{code="200"}} {counter}\n'
    )


def set_metrics(stub: PrometheusStub, counter: float) -> None:
    stub.responses["/metrics"] = (200, exposition(counter), "text/plain; version=0.0.4")


def test_scraper_counter_reset_math(stub):
    scraper = MetricsScraper({"svc": stub.url + "/metrics"}, interval=1, timeout=1)
    for value in (5, 10, 2, 7):  # the counter restarts from 0 after 10
        set_metrics(stub, value)
        assert scraper.scrape_once() == {"svc": True}
        time.sleep(0.01)
    frame = scraper.frame("virtengine_test_requests_total")
    span = (frame["time"].iloc[-1] - frame["time"].iloc[0]).total_seconds()

    increase = scraper.increase("virtengine_test_requests_total", "1m")
    rate = scraper.rate("virtengine_test_requests_total", 60, by="code")
    assert increase["value"].tolist() == [12.0]  # 5 + 2 (from the reset) + 5
    assert increase["code"].tolist() == ["200"]
    assert list(rate.columns) == ["code", "value"]
    assert rate["value"].iloc[0] == pytest.approx(12.0 / span)

    # One sample in the window is not enough for a rate, as in PromQL.
    later = frame["time"].iloc[-1].timestamp()
    assert scraper.increase("virtengine_test_requests_total", "1ms", at=later).empty


def test_scraper_bad_text_and_http_error_mark_down(stub):
    scraper = MetricsScraper({"svc": stub.url + "/metrics"}, interval=1, timeout=1)
    stub.responses["/metrics"] = (200, "this is { not exposition text\n", "text/plain")
    assert scraper.scrape_once() == {"svc": False}
    health = scraper.health()
    assert health.loc[0, "health"] == "down"
    assert "invalid exposition text" in health.loc[0, "lastError"]

    stub.responses["/metrics"] = (500, "boom", "text/plain")
    assert scraper.scrape_once() == {"svc": False}
    assert "HTTP status 500" in scraper.health().loc[0, "lastError"]
    assert scraper.latest("up")["value"].tolist() == [0.0]

    set_metrics(stub, 1)
    assert scraper.scrape_once() == {"svc": True}
    assert scraper.latest("up")["value"].tolist() == [1.0]
    assert scraper.health().loc[0, "lastError"] == ""


def test_scraper_bounds_memory(stub):
    set_metrics(stub, 1)
    scraper = MetricsScraper({"svc": stub.url + "/metrics"}, interval=1, timeout=1, max_points=3, max_series=2)
    for _ in range(5):
        scraper.scrape_once()
    frame = scraper.frame()
    # Two series fit: the counter and up; scrape_duration_seconds is dropped.
    assert sorted(frame["metric"].unique()) == ["up", "virtengine_test_requests_total"]
    assert frame.groupby("metric").size().tolist() == [3, 3]


def test_scraper_rejects_bad_values():
    with pytest.raises(ConfigError, match=r"targets=\{\}"):
        MetricsScraper({})
    with pytest.raises(ConfigError, match=r"'localhost:26660' is not a metrics URL"):
        MetricsScraper({"a": "localhost:26660"})
    with pytest.raises(ConfigError, match=r"timeout='2s' is longer than interval='1s'"):
        MetricsScraper({"a": "http://127.0.0.1:1/metrics"}, interval="1s", timeout="2s")
    with pytest.raises(ConfigError, match=r"max_points=1"):
        MetricsScraper({"a": "http://127.0.0.1:1/metrics"}, max_points=1)


@pytest.fixture
def lab(tmp_path):
    lab = Lab.connect("local", home=tmp_path / "lab", time_scale=0.1)
    try:
        yield lab
    finally:
        lab.halt()
        lab.down()


def metrics_urls(lab) -> dict[str, str]:
    """Return {validator name: metrics URL}; the gateway and the client are left out."""
    return {service["name"]: service["metrics"] for service in lab.status()["services"] if service["kind"] == "validator"}


@pytest.mark.integration
def test_scraper_on_localnet(lab):
    height = "cometbft_consensus_latest_block_height"
    with MetricsScraper(metrics_urls(lab), interval=0.2, timeout=0.2) as scraper:
        wait_for(lambda: len(scraper.latest(height)) == 4)
        first_max = scraper.latest(height)["value"].max()
        wait_for(lambda: scraper.latest(height)["value"].min() >= first_max + 3)

        # The histogram's _count counts committed blocks after the first one that each node saw.
        blocks = scraper.increase("cometbft_consensus_block_interval_seconds_count", "30s", by="target")
        assert blocks["target"].tolist() == sorted(metrics_urls(lab))
        assert (blocks["value"] >= 1).all()

        with lab.fault("stop", TARGET):
            wait_for(lambda: scraper.latest("up").set_index("target")["value"].get(TARGET) == 0.0)
            up = scraper.latest("up").set_index("target")["value"]
            assert up.drop(TARGET).tolist() == [1.0, 1.0, 1.0]
            # The stopped target's height is stale, so it drops out of latest().
            assert TARGET not in scraper.latest(height)["target"].tolist()
            assert "refused" in scraper.health().set_index("target").loc[TARGET, "lastError"].lower()
        wait_for(lambda: scraper.latest("up").set_index("target")["value"].get(TARGET) == 1.0)

    frame = scraper.frame(height, flatten=True)
    assert list(frame.columns) == ["time", "target", "metric", "chain_id", "value"]
    assert set(scraper.frame().columns) == set(FRAME_COLUMNS)


# --- (d) a real Prometheus scraping the localnet ---------------------------------------------


@pytest.fixture
def prometheus(lab):
    require_binary("prometheus")
    server = PrometheusServer(lab.config.home, scrape_targets(lab.status()["services"]), rules_dir=RULES_DIR)
    try:
        yield server.start()
    finally:
        server.stop()


def count_up(client: PrometheusClient) -> int:
    return int((client.query(f'up{{job="{JOB_VALIDATORS}"}}')["value"] == 1).sum())


@pytest.mark.integration
def test_prometheus_scrapes_localnet(lab, prometheus):
    pid = prometheus.pid
    assert Path(f"/proc/{pid}").exists()
    assert prometheus.url.startswith("http://127.0.0.1:")
    config = yaml.safe_load(prometheus.config_path.read_text())
    assert config["scrape_configs"][0]["job_name"] == JOB_VALIDATORS
    assert config["rule_files"] == [str(RULES_DIR / "*.yml")]

    with prometheus.client() as client:
        wait_for(lambda: count_up(client) == 4, timeout=TARGETS_TIMEOUT)
        # The gateway is a target of its own job, scraped on its own schedule.
        wait_for(lambda: (client.targets()["health"] == "up").all(), timeout=TARGETS_TIMEOUT)
        height = "max(cometbft_consensus_latest_block_height)"
        first = client.query(height)["value"].iloc[0]
        wait_for(lambda: client.query(height)["value"].iloc[0] > first)

        stopped = urllib.parse.urlsplit(metrics_urls(lab)[TARGET]).netloc
        with lab.fault("stop", TARGET):
            wait_for(lambda: count_up(client) == 3)
            down = client.query("up == 0")
            assert down["instance"].tolist() == [stopped]
            # TargetDown has `for: 30s`, so it is pending at first.
            wait_for(lambda: "TargetDown" in client.alerts()["alertname"].tolist())
            alerts = client.alerts()
            target_down = alerts[alerts["alertname"] == "TargetDown"]
            assert target_down["instance"].tolist() == [stopped]
            assert target_down["state"].iloc[0] in ("pending", "firing")

    assert prometheus.stop() is True
    assert not Path(f"/proc/{pid}").exists()
    assert not prometheus.state_path.exists()
    with PrometheusClient(f"http://127.0.0.1:{prometheus.port}", timeout=0.5) as client:
        assert client.ready() is False
    assert prometheus.stop() is False


@pytest.mark.integration
def test_prometheus_stopped_by_another_process(lab, prometheus):
    pid = prometheus.pid
    again = PrometheusServer(lab.config.home, {"extra": ["127.0.0.1:9"]}, rules_dir=RULES_DIR).start()
    assert again.pid == pid  # reused and reloaded, not a second server
    assert "extra" in prometheus.config_path.read_text()

    script = "from incidentlab.monitoring import PrometheusServer as S; import sys; " \
             "s = S.attach(sys.argv[1]); print(s.pid if s else None); print(s.stop())"
    result = subprocess.run([sys.executable, "-c", script, str(lab.config.home)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(pid), "True"]
    assert PrometheusServer.attach(lab.config.home) is None
    assert prometheus.is_running() is False


def test_prometheus_server_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"'10.0.0.5:26660' is not a loopback host:port"):
        PrometheusServer(tmp_path, {"v": ["10.0.0.5:26660"]})
    with pytest.raises(ConfigError, match=r"not a list of host:port"):
        PrometheusServer(tmp_path, {"v": "127.0.0.1:26660"})
    with pytest.raises(ConfigError, match=r"rules_dir="):
        PrometheusServer(tmp_path, {"v": ["127.0.0.1:26660"]}, rules_dir=tmp_path / "missing")
    with pytest.raises(PrometheusServerError, match="not started"):
        PrometheusServer(tmp_path, {"v": ["127.0.0.1:26660"]}).url

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PrometheusServerError, match=r"apt-get install -y prometheus"):
        PrometheusServer(tmp_path, {"v": ["127.0.0.1:26660"]}).start()


def test_prometheus_busy_port_named(tmp_path):
    require_binary("prometheus")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PrometheusServerError, match=rf"port {port} on 127.0.0.1 is in use"):
            PrometheusServer(tmp_path, {"v": ["127.0.0.1:26660"]}, port=port).start()
    assert not (tmp_path / "prometheus" / "state.json").exists()


def test_scrape_targets_groups_by_kind():
    services = [
        {"name": "virtengine-node-0", "kind": "validator", "metrics": "http://127.0.0.1:26660/metrics"},
        {"name": "virtengine-node-1", "kind": "validator", "metrics": "http://127.0.0.1:26661/metrics"},
        {"name": "virtengine-gateway", "kind": "gateway", "metrics": "http://127.0.0.1:1318/metrics"},
        {"name": "virtengine-cluster", "kind": "cluster"},
    ]
    assert scrape_targets(services) == {
        JOB_VALIDATORS: ["127.0.0.1:26660", "127.0.0.1:26661"],
        "virtengine-gateway": ["127.0.0.1:1318"],
    }
    with pytest.raises(ConfigError, match=r"does not end in /metrics"):
        scrape_targets([{"name": "x", "kind": "gateway", "metrics": "http://127.0.0.1:1/stats"}])

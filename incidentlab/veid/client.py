"""lab.veid: the learner's client of the localnet's VEID scoring service over HTTP on 127.0.0.1.

Scores captures, lists, diffs, deploys and rolls back configuration revisions, reads the metrics
and runs the investigation tools (score distribution, drift test, input statistics, model check).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from ..errors import ConfigError, ScenarioError, VeidError
from . import APPROVAL_THRESHOLD, SERVICE_NAME

if TYPE_CHECKING:
    import pandas as pd

    from ..lab import Lab
    from .stats import DriftResult

__all__ = ["VeidClient", "restore_revision"]

logger = logging.getLogger(__name__)

API_PREFIX = "/veid/v1"
#: Seconds a request to the service may take; scoring one capture takes a few milliseconds.
REQUEST_TIMEOUT = 5.0


class VeidClient:
    """Client of the VEID service of one lab; ``lab.veid`` creates it.

    Raises ScenarioError on first use when the lab has no VEID service (the Docker backend, or
    a localnet created before the service existed).
    """

    def __init__(self, lab: "Lab") -> None:
        self.lab = lab
        self._endpoints: dict | None = None

    # -- endpoints ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the service's API, like http://127.0.0.1:PORT."""
        return self._service()["rest"]

    @property
    def metrics_url(self) -> str:
        return self._service()["metrics"]

    # -- scoring and revisions ---------------------------------------------------------------

    def score(self, image: bytes | str | Path | None = None, *, kind: str = "genuine", seed: int = 0) -> dict:
        """Send one capture to ``POST /veid/v1/score`` and return the response (score, threshold, status).

        ``image`` is JPEG or PNG bytes or a file path; when None, a capture of ``kind`` is drawn
        from ``seed``. Raises VeidError when the service cannot score it.
        """
        from .captures import capture_bytes

        if image is None:
            data = capture_bytes(seed, kind)
        elif isinstance(image, (str, Path)):
            data = Path(image).read_bytes()
        else:
            data = bytes(image)
        response = self._request("POST", "/score", data=data)
        body = response.json()
        if response.status_code != 200:
            raise VeidError(f"{SERVICE_NAME} returned HTTP {response.status_code}: {body.get('error')}")
        return body

    def revisions(self) -> "pd.DataFrame":
        """Return the configuration revisions (id, author, time, change, message, current), oldest first."""
        import pandas as pd

        data = self._get("/revisions")
        rows = [{"id": r["id"], "author": r["author"], "time": r["time"], "change": r["change"],
                 "message": r["message"], "current": r["id"] == data["current"]} for r in data["revisions"]]
        return pd.DataFrame(rows, columns=["id", "author", "time", "change", "message", "current"])

    def current(self) -> dict:
        """Return the current revision with its full configuration."""
        data = self._get("/revisions")
        return next(r for r in data["revisions"] if r["id"] == data["current"])

    def diff(self, a: str | None = None, b: str | None = None) -> "pd.DataFrame":
        """Return the settings that differ between revisions ``a`` and ``b``, like ``git diff a b``.

        ``b`` defaults to the current revision and ``a`` to the one before ``b``. Raises
        ConfigError for an unknown revision id.
        """
        import pandas as pd

        from .revisions import diff_configs

        data = self._get("/revisions")
        configs = {r["id"]: r["config"] for r in data["revisions"]}
        b = b or data["current"]
        if a is None and b in configs:
            order = list(configs)
            a = order[max(0, order.index(b) - 1)]
        for name in (a, b):
            if name not in configs:
                raise ConfigError(f"revision {name!r} does not exist; known revisions: {', '.join(configs)}")
        rows = diff_configs(configs[a], configs[b])
        return pd.DataFrame(rows, columns=["setting", "old", "new"]).rename(columns={"old": a, "new": b})

    def deploy(self, change: dict, author: str | None = None, message: str = "", *, record: bool = True) -> dict:
        """Deploy a new revision that applies ``change`` (like {"divisor": 255}); return the revision.

        During a simulation a deploy is a remediation action (a hotfix) and lands in the timeline
        unless ``record`` is false, as for the fault's own deploy. Raises ConfigError when the
        service rejects the change, naming the setting.
        """
        simulation = self.lab.simulation_running if record else None
        author = author or (simulation.learner if simulation is not None else "learner")
        revision = self._post("/revisions", {"change": change, "author": author, "message": message})
        logger.info("deployed %s to %s author=%s change=%s", revision["id"], SERVICE_NAME, author, change)
        if simulation is not None:
            simulation.record_action("deploy", SERVICE_NAME, {"Status": f"{revision['id']} ({change})"}, change=change)
        return revision

    def rollback(self, to: str | None = None, author: str | None = None) -> dict:
        """Roll back to revision ``to`` (default: the last one with another configuration), like `kubectl rollout undo`.

        The rollback is a new revision that copies the old configuration. During a simulation it
        is recorded as a remediation action. Raises ConfigError for an unknown revision.
        """
        simulation = self.lab.simulation_running
        author = author or (simulation.learner if simulation is not None else "learner")
        revision = self._post("/rollback", {"to": to, "author": author})
        logger.info("rolled back %s to %s as %s author=%s", SERVICE_NAME, revision["change"]["rollback_to"],
                    revision["id"], author)
        if simulation is not None:
            state = {"Status": f"{revision['id']} (copy of {revision['change']['rollback_to']})"}
            simulation.record_action("rollback", SERVICE_NAME, state, to=to)
        return revision

    # -- metrics and evidence ----------------------------------------------------------------

    def metrics(self) -> "pd.DataFrame":
        """Return the service's virtengine_veid_* samples (name, labels, value) from its /metrics, buckets left out."""
        import pandas as pd
        from prometheus_client.parser import text_string_to_metric_families

        text = self._request("GET", "", url=self.metrics_url).text
        rows = [{"name": s.name, "labels": ", ".join(f"{k}={v}" for k, v in s.labels.items()), "value": s.value}
                for family in text_string_to_metric_families(text) for s in family.samples
                if not s.name.endswith("_bucket")]
        return pd.DataFrame(rows, columns=["name", "labels", "value"])

    def metric(self, name: str, **labels: str) -> float:
        """Return the value of one sample of /metrics; raises VeidError when the series does not exist."""
        frame = self.metrics()
        text = ", ".join(f"{k}={v}" for k, v in labels.items())
        match = frame[(frame["name"] == name) & (frame["labels"] == text)]
        if match.empty:
            raise VeidError(f"{SERVICE_NAME} exposes no series {name}{{{text}}}; list them with lab.veid.metrics()")
        return float(match["value"].iloc[0])

    def watch(self, count: int = 6, interval: float | None = None) -> "pd.DataFrame":
        """Read /metrics once, then ``count`` more times ``interval`` seconds apart (default 10 s times the time scale).

        Returns one row per later reading: the score average and, since the reading before, the
        verifications, rejections, errors and the share of verifications rejected. It is the loop
        of ``curl /metrics`` an operator runs.
        """
        import datetime as _dt
        import time

        import pandas as pd

        interval = 10.0 * self.lab.config.time_scale if interval is None else interval
        names = {"requests": "virtengine_veid_scoring_requests_total", "rejections": "virtengine_veid_scoring_rejections_total",
                 "errors": "virtengine_veid_scoring_errors_total"}
        rows, previous = [], None
        for index in range(count + 1):
            frame = self.metrics()
            totals = {key: float(frame.loc[frame["name"] == name, "value"].sum()) for key, name in names.items()}
            if previous is not None:
                average = frame.loc[frame["name"] == "virtengine_veid_scoring_score_avg", "value"]
                grown = {key: int(totals[key] - previous[key]) for key in names}
                ratio = round(grown["rejections"] / grown["requests"], 2) if grown["requests"] else float("nan")
                rows.append({"time": _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M:%S"),
                             "score_avg": round(float(average.iloc[0]), 3) if len(average) else float("nan"),
                             **grown, "rejection_ratio": ratio})
            previous = totals
            if index < count:
                time.sleep(interval)
        return pd.DataFrame(rows, columns=["time", "score_avg", *names, "rejection_ratio"])

    def verifications(self, since: str | None = None, revision: str | None = None) -> "pd.DataFrame":
        """Return the recent verifications the service logged: time, request, source, revision, score, status, inputs."""
        import pandas as pd

        rows = self._get("/verifications" + (f"?since={since}" if since else ""))["verifications"]
        columns = ["time", "request_id", "source", "revision", "score", "status", "mean", "std", "min", "max", "error"]
        frame = pd.DataFrame(rows, columns=columns)
        return frame[frame["revision"] == revision] if revision else frame

    def score_distribution(self) -> "pd.DataFrame":
        """Return count, mean, median and approval rate of the scores under each revision, and of the baseline."""
        import pandas as pd

        from .stats import load_baseline, score_summary

        frame = self.verifications()
        rows = [{"scored by": "baseline (training)", **score_summary(load_baseline()["scores"], APPROVAL_THRESHOLD),
                 "errors": 0}]
        for revision, group in frame.groupby("revision", sort=False):
            rows.append({"scored by": revision, **score_summary(group["score"].tolist(), APPROVAL_THRESHOLD),
                         "errors": int((group["status"] == "error").sum())})
        return pd.DataFrame(rows)

    def drift_test(self, revision: str | None = None) -> "DriftResult":
        """Test the scores of ``revision`` (default: the current one) against the baseline (two-sample KS test).

        Raises ValueError when that revision has scored too few verifications yet.
        """
        from .stats import drift_test

        revision = revision or self.current()["id"]
        return drift_test(self.verifications(revision=revision)["score"].dropna().tolist())

    def input_stats(self, revision: str | None = None) -> "pd.DataFrame":
        """Return the preprocessed pixels' mean, std, min and max under ``revision`` (default: current) against the baseline."""
        import pandas as pd

        from .stats import input_summary, load_baseline

        revision = revision or self.current()["id"]
        frame = self.verifications(revision=revision).dropna(subset=["mean"])
        recent = input_summary(frame.to_dict("records"))
        expected = load_baseline()["inputs"]
        return pd.DataFrame([{"statistic": key, f"recent ({revision})": recent[key], "baseline": expected[key]}
                             for key in ("mean", "std", "min", "max")])

    def model_check(self) -> "pd.DataFrame":
        """Return the model check as a table: file hash against the manifest, version, loaded, determinism."""
        import pandas as pd

        check = self._get("/model")
        rows = [
            {"check": "sha256 matches the manifest", "ok": check["actual_sha256"] == check["expected_sha256"],
             "observed": check["actual_sha256"], "expected": check["expected_sha256"]},
            {"check": "model version", "ok": check["model_version"] == check["manifest_version"],
             "observed": check["model_version"], "expected": check["manifest_version"]},
            {"check": "model loaded", "ok": check["loaded"], "observed": check["error"] or "loaded", "expected": "loaded"},
            {"check": "same input gives the same score", "ok": bool(check.get("deterministic")),
             "observed": f"{check.get('probe_score')} then {check.get('repeat_score')}", "expected": "equal scores"},
        ]
        return pd.DataFrame(rows)

    def plot_scores(self, revision: str | None = None):
        """Plot the score histogram of ``revision`` (default: current) over the baseline's, with the threshold."""
        import matplotlib.pyplot as plt

        from .stats import load_baseline

        revision = revision or self.current()["id"]
        scores = self.verifications(revision=revision)["score"].dropna()
        figure, axis = plt.subplots(figsize=(8, 3.5))
        bins = [i / 20 for i in range(21)]
        axis.hist(load_baseline()["scores"], bins=bins, density=True, alpha=0.5, label="baseline (training)")
        axis.hist(scores, bins=bins, density=True, alpha=0.6, label=f"{revision} ({len(scores)} verifications)")
        axis.axvline(APPROVAL_THRESHOLD, color="black", linestyle="--", label=f"approval at {APPROVAL_THRESHOLD}")
        axis.set_xlabel("VEID score")
        axis.set_ylabel("density")
        axis.legend(loc="upper left")
        plt.close(figure)
        return figure

    # -- private helpers -----------------------------------------------------------------

    def _service(self) -> dict:
        # The ports come from the network file and survive restarts, so one lookup is enough.
        if self._endpoints is None:
            self._endpoints = self._find_service()
        return self._endpoints

    def _find_service(self) -> dict:
        if self.lab.backend.name != "local":
            raise ScenarioError(f"the VEID service runs on the local backend only (it needs numpy and Pillow, "
                                f"which the {self.lab.backend.name} image lacks); connect with Lab.connect('local')")
        for service in self.lab.status()["services"]:
            if service["kind"] == "veid":
                return service
        raise ScenarioError(f"the localnet in {self.lab.config.home} has no VEID service; run `incidentlab lab down`, "
                            f"remove {self.lab.config.localnet_dir} and start the lab again to create one")

    def _request(self, method: str, path: str, url: str | None = None, **options) -> requests.Response:
        """Send one request to the service; raise VeidError naming the state when it gets no response."""
        url = url or self.url + API_PREFIX + path
        hint = f"check lab.inspect({SERVICE_NAME!r}) and its log with lab.logs({SERVICE_NAME!r})"
        try:
            return requests.request(method, url, timeout=REQUEST_TIMEOUT, **options)
        except requests.Timeout as exc:
            raise VeidError(f"{SERVICE_NAME} did not respond to {method} {url} within {REQUEST_TIMEOUT:g} s, "
                            f"so it may be paused or overloaded; {hint}") from exc
        except requests.ConnectionError as exc:
            raise VeidError(f"{SERVICE_NAME} refused the connection for {method} {url}, so it is not running; "
                            f"start it with lab.start({SERVICE_NAME!r}) or {hint}") from exc

    def _get(self, path: str) -> dict:
        response = self._request("GET", path)
        response.raise_for_status()
        return response.json()

    def _post(self, path: str, payload: dict) -> dict:
        response = self._request("POST", path, json=payload)
        body = response.json()
        if response.status_code >= 400:
            raise ConfigError(f"{SERVICE_NAME} rejected POST {API_PREFIX}{path} with HTTP {response.status_code}: "
                              f"{body.get('error')}")
        return body


def restore_revision(url: str, to: str, config: dict, author: str = "incidentlab cleanup") -> str:
    """Roll the service at ``url`` back to revision ``to`` unless its configuration already equals ``config``.

    The undo step of a VEID fault: safe to repeat, and verified by reading the current revision
    back. Returns a note; one that starts with FAILED means the service is not on ``config``.
    """
    def current() -> dict:
        data = requests.get(url + API_PREFIX + "/revisions", timeout=REQUEST_TIMEOUT).json()
        return next(r for r in data["revisions"] if r["id"] == data["current"])

    before = current()
    if before["config"] == config:
        return f"{SERVICE_NAME} already on the configuration of {to} ({before['id']})"
    response = requests.post(url + API_PREFIX + "/rollback", json={"to": to, "author": author}, timeout=REQUEST_TIMEOUT)
    after = current()
    if after["config"] != config:
        return f"FAILED: {SERVICE_NAME} is on {after['id']} after the rollback (HTTP {response.status_code}), not on {to}'s configuration"
    return f"rolled {SERVICE_NAME} back from {before['id']} to {to} as {after['id']}"

"""Block-height sampling: probe `/status` of several CometBFT nodes over HTTP, in the background or in a loop.

Each sample is one probe_status() result tagged with its target name.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime as _dt
import logging
import threading
import time
from typing import Any, Callable

from ..errors import ConfigError
from .rpc import CometBFTClient, probe_status

__all__ = ["HeightSampler", "sample_heights", "FRAME_COLUMNS"]

logger = logging.getLogger(__name__)

#: Columns of the DataFrame that frame() and sample_heights() return, in order.
FRAME_COLUMNS = ("time", "target", "ok", "height", "catching_up", "latency_s", "error")
DEFAULT_INTERVAL = 1.0
DEFAULT_TIMEOUT = 1.0
DEFAULT_MAX_SAMPLES = 100_000


class HeightSampler:
    """Probe every target's `/status` each interval on a daemon thread and keep the samples.

    Takes ``targets`` (target name to RPC URL), the interval and the per-request timeout in
    seconds, ``on_sample`` (called with each sample, on a worker thread) and ``max_samples``
    (the oldest samples are dropped beyond it). Targets are probed in parallel, so a frozen
    node, whose probe waits for the whole timeout, does not delay the others. A target whose
    previous probe is still running skips that tick. Raises ConfigError for invalid values.
    Use it as a context manager, or call start() and stop().
    """

    def __init__(
        self,
        targets: dict[str, str],
        *,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        on_sample: Callable[[dict], Any] | None = None,
        max_samples: int = DEFAULT_MAX_SAMPLES,
    ):
        self.targets = _check_targets(targets)
        self.interval = _check_seconds("interval", interval)
        self.timeout = _check_seconds("timeout", timeout)
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ConfigError(f"max_samples={max_samples!r} is invalid. Use a whole number of at least 1.")
        self.on_sample = on_sample

        # The clients check every URL now, so a bad one raises here and not on the thread.
        self._clients = {
            name: CometBFTClient(url, timeout=self.timeout) for name, url in self.targets.items()
        }
        self._samples: collections.deque[dict] = collections.deque(maxlen=max_samples)
        self._latest: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def __enter__(self) -> "HeightSampler":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the sampling thread, unless it is already running."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self.targets), thread_name_prefix="incidentlab-probe"
        )
        self._thread = threading.Thread(target=self._run, name="incidentlab-height-sampler", daemon=True)
        self._thread.start()
        logger.info(
            "height sampler started: targets %s, every %.3g s", ", ".join(self.targets), self.interval
        )

    def stop(self) -> None:
        """Stop sampling and wait for the probes in flight, at most one timeout. Calling it again does nothing."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
            logger.info("height sampler stopped: %d samples kept", len(self._samples))
        for client in self._clients.values():
            client.close()

    def samples(self) -> list[dict]:
        """Return a copy of the kept samples, oldest first."""
        with self._lock:
            return list(self._samples)

    def frame(self):
        """Return the kept samples as a pandas DataFrame with the columns in FRAME_COLUMNS."""
        return _frame(self.samples())

    def first_failure(self, after: _dt.datetime | None = None, *, target: str | None = None) -> dict | None:
        """Return the earliest kept failing sample, or None.

        Takes ``after`` (an aware datetime: only samples later than it count) and ``target``
        (only that target's samples count). Samples dropped beyond max_samples are not searched.
        Raises ConfigError when ``after`` is a naive datetime.
        """
        if after is not None and after.tzinfo is None:
            raise ConfigError(
                f"after={after!r} is a naive datetime. Pass an aware one, such as datetime.now(timezone.utc)."
            )
        for sample in self.samples():
            if sample["ok"] or (target is not None and sample["target"] != target):
                continue
            if after is None or sample["time"] > after:
                return sample
        return None

    def latest(self) -> dict[str, dict]:
        """Return the newest sample of each target that has one."""
        with self._lock:
            return dict(self._latest)

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stopping.is_set():
            for name in self.targets:
                with self._lock:
                    busy = name in self._in_flight
                    self._in_flight.add(name)
                if busy:
                    logger.debug("target %s: previous probe still running, skipping this tick", name)
                    continue
                try:
                    self._pool.submit(self._probe, name)
                except RuntimeError:
                    # The interpreter is exiting and has shut the pool down: stop sampling quietly.
                    logger.debug("sampler stopped at interpreter exit while probing %s", name)
                    return

            # Ticks follow a fixed schedule, so a slow loop does not drift the sampling times.
            # After a stall longer than one interval (a suspended laptop), restart the schedule
            # from now in place of firing every missed tick at once.
            next_tick += self.interval
            now = time.monotonic()
            if next_tick < now:
                next_tick = now
            self._stopping.wait(next_tick - now)

    def _probe(self, name: str) -> None:
        try:
            sample = _tagged(name, probe_status(self.targets[name], self.timeout, client=self._clients[name]))
            self._record(sample)
        except Exception:
            # Log the bug and go on, so that one broken probe does not stop the sampler.
            logger.exception("target %s: probe failed unexpectedly", name)
        finally:
            with self._lock:
                self._in_flight.discard(name)

    def _record(self, sample: dict) -> None:
        name = sample["target"]
        with self._lock:
            previous = self._latest.get(name)
            self._samples.append(sample)
            self._latest[name] = sample
        _log_sample(sample, previous)
        if self.on_sample is not None:
            try:
                self.on_sample(sample)
            except Exception:
                logger.exception("target %s: on_sample callback raised, sampling continues", name)


def sample_heights(
    targets: dict[str, str],
    *,
    count: int = 10,
    interval: float = 5.0,
    timeout: float = DEFAULT_TIMEOUT,
):
    """Probe every target's `/status` ``count`` times, ``interval`` seconds apart, and return a DataFrame.

    The blocking form of HeightSampler for a notebook cell, like the shell loop that runs
    `curl -s http://localhost:26657/status | jq .result.sync_info.latest_block_height`
    every 5 seconds. Each round probes the targets in parallel. Returns the columns in
    FRAME_COLUMNS. Raises ConfigError for invalid values.
    """
    targets = _check_targets(targets)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"count={count!r} is invalid. Use a whole number of rounds of at least 1.")
    interval = _check_seconds("interval", interval)
    timeout = _check_seconds("timeout", timeout)

    samples: list[dict] = []
    clients = {name: CometBFTClient(url, timeout=timeout) for name, url in targets.items()}
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
            started = time.monotonic()
            for round_index in range(count):
                time.sleep(max(0.0, started + round_index * interval - time.monotonic()))
                samples.extend(_probe_round(pool, clients, samples[-len(targets):]))
    finally:
        for client in clients.values():
            client.close()
    return _frame(samples)


def _probe_round(pool, clients: dict[str, CometBFTClient], previous: list[dict]) -> list[dict]:
    """Probe every client in parallel and return the samples in target order."""
    futures = {name: pool.submit(probe_status, client.url, client=client) for name, client in clients.items()}
    last = {sample["target"]: sample for sample in previous}
    samples = []
    for name, future in futures.items():
        sample = _tagged(name, future.result())
        _log_sample(sample, last.get(name))
        samples.append(sample)
    return samples


def _tagged(name: str, sample: dict) -> dict:
    return {"target": name, **sample}


def _log_sample(sample: dict, previous: dict | None) -> None:
    """Log each sample at DEBUG, and at INFO when the target turns from ok to failing or back."""
    name = sample["target"]
    if sample["ok"]:
        logger.debug(
            "target %s: height %s, catching_up %s, %.3f s",
            name, sample["height"], sample["catching_up"], sample["latency_s"],
        )
        if previous is not None and not previous["ok"]:
            logger.info("target %s: responding again at height %s", name, sample["height"])
        return
    logger.debug("target %s: probe failed (%s): %s", name, sample["error"], sample["detail"])
    if previous is None or previous["ok"]:
        logger.info("target %s: probe failing (%s): %s", name, sample["error"], sample["detail"])


def _frame(samples: list[dict]):
    import pandas as pd  # imported here so that `import incidentlab.probes` stays fast

    rows = [{column: sample[column] for column in FRAME_COLUMNS} for sample in samples]
    frame = pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    frame["height"] = frame["height"].astype("Int64")
    frame["catching_up"] = frame["catching_up"].astype("boolean")
    frame["ok"] = frame["ok"].astype(bool)
    frame["latency_s"] = frame["latency_s"].astype(float)
    return frame.sort_values(["time", "target"], kind="stable", ignore_index=True)


def _check_targets(targets: dict[str, str]) -> dict[str, str]:
    if not isinstance(targets, dict) or not targets:
        raise ConfigError(
            f"targets={targets!r} is invalid. Pass a non-empty dict of target name to RPC URL, "
            "like {'virtengine-node-0': 'http://127.0.0.1:26657'}."
        )
    for name, url in targets.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"target name {name!r} is invalid. Use a non-empty string such as 'virtengine-node-0'."
            )
        if not isinstance(url, str):
            raise ConfigError(
                f"URL {url!r} of target {name!r} is not a string. Use one like http://127.0.0.1:26657"
            )
    return dict(targets)


def _check_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name}={value!r} is invalid. Use a number of seconds greater than 0.")
    return float(value)

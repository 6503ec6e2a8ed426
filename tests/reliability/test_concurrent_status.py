"""200 concurrent /status clients against a validator and the gateway: no errors, no descriptor leak.

Each client opens its own connection; all start at once behind a barrier. The service's open
file descriptors are counted in /proc/PID/fd before the load and after the clients close.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest
import requests

from incidentlab.localnet.gateway import MAX_IDLE_UPSTREAM_CONNECTIONS

from .support import BACKENDS, open_fds, running_lab

CLIENTS = 200
#: GETs each client sends on its keep-alive connection.
REQUESTS_PER_CLIENT = 3
#: Seconds one request may take. Linux resends a SYN dropped by a full listen backlog 1 s and
#: 3 s after the first one, so the limit leaves room for both resends.
REQUEST_TIMEOUT = 15.0
#: Descriptors a service may have open above its count before the load once the clients are
#: gone: a peer connection or a log file reopened meanwhile, and the gateway's idle upstream
#: connections (one end in the gateway, the other in validator 0).
FD_SLACK = 3 + MAX_IDLE_UPSTREAM_CONNECTIONS
#: Seconds to wait for the service to close the clients' connections.
FD_SETTLE_TIMEOUT = 10.0
#: CometBFT's own timing, so the gateway's upstream timeout is its full 2 s. At time_scale 0.1
#: it is 0.2 s, which a validator serving 200 clients on a busy shared machine can exceed.
LOAD_TIME_SCALE = 1.0


@pytest.fixture(scope="module", params=BACKENDS)
def load_lab(request, tmp_path_factory):
    """A running lab on each backend at LOAD_TIME_SCALE."""
    home = tmp_path_factory.mktemp(f"load-{request.param}") / "lab"
    with running_lab(request.param, home, time_scale=LOAD_TIME_SCALE) as lab:
        yield lab


def status_url(lab, service: str) -> str:
    """Return the /status URL of ``service``: a validator's RPC, or the gateway's RPC proxy."""
    if service == "validator":
        return lab.endpoints()["virtengine-node-0"] + "/status"
    return lab.gateway_url() + "/rpc/status"


def target_name(service: str) -> str:
    return "virtengine-node-0" if service == "validator" else "virtengine-gateway"


@pytest.mark.parametrize("service", ["validator", "gateway"])
def test_concurrent_status_clients(load_lab, service):
    lab = load_lab
    url = status_url(lab, service)
    pid = lab.inspect(target_name(service))["Pid"]
    baseline = settled_fds(pid)

    results = run_clients(url)

    failures = [result for result in results if result != 200]
    assert failures == [], f"{len(failures)} of {len(results)} requests failed, first: {failures[:3]}"
    assert len(results) == CLIENTS * REQUESTS_PER_CLIENT
    assert lab.inspect(target_name(service))["Pid"] == pid, "the service restarted under load"
    assert wait_for_fds(pid, baseline + FD_SLACK), f"fds of pid {pid}: {open_fds(pid)}, before the load {baseline}"


def run_clients(url: str) -> list:
    """Start CLIENTS threads behind a barrier, each sending REQUESTS_PER_CLIENT GETs; return every status or error."""
    barrier = threading.Barrier(CLIENTS)

    def client() -> list:
        outcomes = []
        with requests.Session() as session:
            session.trust_env = False  # ignore http_proxy and similar variables: loopback only
            barrier.wait(timeout=60)
            for _ in range(REQUESTS_PER_CLIENT):
                try:
                    outcomes.append(session.get(url, timeout=REQUEST_TIMEOUT).status_code)
                except requests.RequestException as exc:
                    outcomes.append(repr(exc))
        return outcomes

    with concurrent.futures.ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        futures = [pool.submit(client) for _ in range(CLIENTS)]
        return [outcome for future in futures for outcome in future.result(timeout=120)]


def settled_fds(pid: int) -> int:
    """Return the fd count of ``pid`` once two reads 0.2 s apart agree (at most 2 s)."""
    previous = open_fds(pid)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        time.sleep(0.2)
        current = open_fds(pid)
        if current == previous:
            return current
        previous = current
    return previous


def wait_for_fds(pid: int, limit: int) -> bool:
    """Poll until ``pid`` has at most ``limit`` fds open; return False at FD_SETTLE_TIMEOUT."""
    deadline = time.monotonic() + FD_SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        if open_fds(pid) <= limit:
            return True
        time.sleep(0.1)
    return False


def test_gateway_after_upstream_restart(load_lab):
    # The gateway keeps idle connections to validator 0; after a restart they are dead, and
    # the first request on one must go again on a new connection instead of failing. The
    # client load is stopped, so that only this test's requests meet the dead connections.
    lab = load_lab
    url = status_url(lab, "gateway")
    lab.stop("virtengine-client", timeout=1)
    try:
        with requests.Session() as session:
            session.trust_env = False
            assert [session.get(url, timeout=5).status_code for _ in range(5)] == [200] * 5

            lab.restart("virtengine-node-0")
            direct = status_url(lab, "validator")
            assert wait_for(lambda: ok(session, direct)), "validator 0 did not respond after its restart"

            assert [session.get(url, timeout=5).status_code for _ in range(5)] == [200] * 5
    finally:
        lab.start("virtengine-client")


def ok(session: requests.Session, url: str) -> bool:
    try:
        return session.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False

"""Every fault kind, on every backend: SIGKILL the injecting process at random points, then clean up.

The injector is a real subprocess and `incidentlab cleanup` is the real command. Afterwards every
target is running and unpaused, no fault proxy, route or CPU burner is left, and the journal
records every fault as reverted. A fault kind added to the registry is picked up by itself.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import requests

from incidentlab.chaos.faults import FAULTS
from incidentlab.chaos.journal import Journal
from incidentlab.localnet.routes import read_routes

from .support import incidentlab, processes_matching

TARGET = "virtengine-node-1"
#: Random kill points per fault kind and backend.
POINTS = 3
#: Latest kill point, in seconds after the injector has built its fault object.
MAX_KILL_DELAY = 0.6
#: Parameters per kind that keep each fault short and cheap; a kind missing here gets none.
#: Durations are before time scaling, and CPU stress outlives the test, so a leaked worker shows.
FAULT_PARAMS = {
    "stop": {"timeout": 1},
    "pause-cycle": {"cycles": 20, "paused": 1.0, "running": 1.0},
    "cpu-stress": {"duration": 600, "workers": 1},
    "latency": {"delay": 0.05},
}
#: Targets of the kinds that do not act on a validator; None is the fault's default (a namespace).
FAULT_TARGETS = {"quota-restrict": None, "requests-missing": None, "capacity-short": None,
                 "veid-bad-revision": "virtengine-veid"}
FAULT_PARAMS["requests-missing"] = {"deployment": "lease-reliability"}
FAULT_PARAMS["quota-restrict"] = {"hard": {"pods": "0"}}  # no quota exists on a new lab, so it creates one
#: Kinds whose target runs on the local backend only.
LOCAL_ONLY = {"veid-bad-revision"}
#: Kinds that talk to a service's API before they journal, so a later kill point is needed to
#: catch one with a fault open.
SLOW_KINDS = {"quota-restrict", "requests-missing", "capacity-short", "veid-bad-revision"}
SEED = 9

INJECTOR = textwrap.dedent("""
    import json, sys, time
    from incidentlab import Lab
    backend, home, kind, target, params = sys.argv[1:6]
    target = json.loads(target)
    lab = Lab.connect(backend, home=home, start=False, reconcile=False)
    fault = lab.fault(kind, target, **json.loads(params))
    print("ready", flush=True)
    fault.inject()
    print("injected", fault.id, flush=True)
    time.sleep(120)
""")


def kill_points(backend: str, kind: str) -> list[float]:
    """Return the seeded kill delays of one kind: one at the very start, the others random."""
    rng = random.Random(f"{SEED}:{backend}:{kind}")
    latest = MAX_KILL_DELAY * (4 if kind in SLOW_KINDS else 1)
    return [0.0] + sorted(rng.uniform(0, latest) for _ in range(POINTS - 1))


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_sigkilled_injector_leaves_nothing(backend_lab, kind):
    lab = backend_lab
    backend = lab.backend.name
    if backend != "local" and kind in LOCAL_ONLY:
        pytest.skip(f"{kind} acts on a service that runs on the local backend only")
    if kind == "requests-missing":
        lab.cluster.deploy_lease(FAULT_PARAMS[kind]["deployment"])
    left_open = 0
    for delay in kill_points(backend, kind):
        before = {entry["id"] for entry in Journal(lab.config.home).entries()}
        run_and_kill_injector(lab, kind, delay)
        left_open += len([e for e in Journal(lab.config.home).open_entries() if e["id"] not in before])

        result = incidentlab(lab.config.home, "cleanup")
        assert result.returncode == 0, f"kill at {delay:.3f} s: {result.stdout}{result.stderr}"

        entries = [e for e in Journal(lab.config.home).entries() if e["id"] not in before]
        assert all(e["state"] == "reverted" for e in entries), (delay, entries)
        assert_nothing_left(lab, entries)
    # At least one kill must have left a fault open, or cleanup was never put to work.
    assert left_open >= 1


def run_and_kill_injector(lab, kind: str, delay: float) -> None:
    """Start the injector, SIGKILL it ``delay`` seconds after its fault object exists, and reap it."""
    params = json.dumps(FAULT_PARAMS.get(kind, {}))
    target = json.dumps(FAULT_TARGETS.get(kind, TARGET))
    command = [sys.executable, "-c", INJECTOR, lab.backend.name, str(lab.config.home), kind, target, params]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "ready", f"injector failed before injecting: {line}{child.stderr.read()}"
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
        child.stderr.close()


def assert_nothing_left(lab, entries: list[dict]) -> None:
    """Assert every target runs unpaused and responds, with no proxy, route or burner of ``entries`` left."""
    for name in lab.backend.targets()["NAME"]:
        state = lab.inspect(name)
        assert (name, state["Status"], state["Paused"]) == (name, "running", False)
    home = str(lab.config.home).encode()
    assert processes_matching(b"incidentlab.chaos.proxy", home) == []
    assert read_routes(lab.config.localnet_dir, live_only=False) == {}
    for entry in entries:
        assert processes_matching(entry["id"].encode()) == [], f"a process of {entry['id']} is left"
        if lab.backend.name == "docker":
            listing = lab.backend.container(TARGET).exec_run(["sh", "-c", "cat /proc/[0-9]*/cmdline"]).output
            assert entry["id"].encode() not in listing, f"a process of {entry['id']} is left in {TARGET}"
    with requests.Session() as session:
        session.trust_env = False
        assert session.get(lab.endpoints()[TARGET] + "/status", timeout=5).status_code == 200


def test_cleanup_finds_burners_missing_from_journal(backend_lab):
    # The journal entry as written before the workers started: no worker pid in its undo yet.
    lab = backend_lab
    fault = lab.fault("cpu-stress", TARGET, duration=600, workers=1).inject()
    fault.entry["undo"] = fault.entry["undo"][-1:]
    assert all("pid" not in step for step in fault.entry["undo"])
    fault.journal.write(fault.entry)

    result = incidentlab(lab.config.home, "cleanup")

    assert result.returncode == 0, result.stdout + result.stderr
    assert fault.journal.read(fault.id)["state"] == "reverted"
    assert_nothing_left(lab, [fault.entry])


def test_cleanup_finds_proxy_before_its_state_file(backend_lab):
    # A proxy writes its state file once it listens; an injector killed before then leaves none.
    lab = backend_lab
    fault = lab.fault("latency", TARGET, delay=0.05).inject()
    for step in fault.entry["undo"]:
        if step["op"] == "stop_proxy":
            os.unlink(step["state"])

    result = incidentlab(lab.config.home, "cleanup")

    assert result.returncode == 0, result.stdout + result.stderr
    assert fault.journal.read(fault.id)["state"] == "reverted"
    assert_nothing_left(lab, [fault.entry])

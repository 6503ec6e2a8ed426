"""A kernel killed in the middle of a simulation: the next Lab.connect() cleans up, the record so far is intact.

The simulation runs in a real subprocess, as a notebook kernel would, and is SIGKILLed right
after inject() and after the learner's first decisions, so neither close() nor any exit hook runs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from incidentlab import Lab
from incidentlab.chaos.journal import Journal
from incidentlab.incident.record import IncidentStore

from .support import BACKENDS, TIME_SCALE, require_docker

KERNEL = textwrap.dedent("""
    import sys, time
    from incidentlab import Lab
    lab = Lab.connect(sys.argv[1], home=sys.argv[2], time_scale=float(sys.argv[3]))
    sim = lab.simulation("node-down", learner="ada", seed=3, variant="two-down")
    sim.inject()
    sim.acknowledge()
    sim.triage(severity="SEV-1", affected_services=["block-production"])
    print(sim.incident.id, *sim.variant["targets"], flush=True)
    time.sleep(120)
""")


@pytest.mark.parametrize("backend", BACKENDS)
def test_connect_after_killed_kernel_cleans_up(tmp_path, backend):
    if backend == "docker":
        require_docker()
    home = tmp_path / "lab"
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL, backend, str(home), str(TIME_SCALE)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lab = None
    try:
        line = kernel.stdout.readline().split()
        assert line, f"the kernel failed before injecting: {kernel.stderr.read()}"
        incident_id, targets = line[0], line[1:]
        kernel.send_signal(signal.SIGKILL)
        kernel.wait(timeout=10)
        assert {Lab.connect(backend, home=home, start=False, reconcile=False).inspect(t)["Status"]
                for t in targets} == {"exited"}

        lab = Lab.connect(backend, home=home)

        for name in lab.backend.targets()["NAME"]:
            assert lab.inspect(name)["Status"] == "running", name
        entries = Journal(home).entries()
        assert sorted(entry["target"] for entry in entries) == sorted(targets)
        assert {entry["state"] for entry in entries} == {"reverted"}
        assert all("owner process" in entry["note"] for entry in entries)

        incident = IncidentStore(home).load(incident_id)
        kinds = [event.kind for event in incident.timeline]
        assert kinds[:1] == ["fault_injected"]
        assert "acknowledged" in kinds
        assert incident.severity == "SEV-1"
        assert incident.learner == "ada"
    finally:
        if kernel.poll() is None:
            kernel.kill()
        kernel.stdout.close()
        kernel.stderr.close()
        lab = lab or Lab.connect(backend, home=home, start=False, reconcile=False)
        try:
            lab.halt()
        finally:
            lab.down()

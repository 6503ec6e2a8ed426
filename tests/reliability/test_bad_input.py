"""Bad input where a user types it, in the CLI and the Lab API: each a clear error naming the value and the fix.

CLI errors exit with code 2 and change nothing. Incident records survive corruption of a
neighbour and a writer killed mid-save, because every write is atomic.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from incidentlab import Lab
from incidentlab.chaos.journal import Journal
from incidentlab.errors import ConfigError, RecordError, ScenarioError, TargetNotFound
from incidentlab.incident.record import Incident, IncidentStore
from incidentlab.probes.prometheus import PrometheusClient, PrometheusError

from .support import incidentlab, running_lab

TARGET = "virtengine-node-1"

# -- the CLI without a running lab -------------------------------------------------------

#: Arguments, then texts the error must contain: the value as typed and the way out.
NO_LAB_CASES = [
    (["lab", "up", "--backend", "nope"], ["'nope'", "choose one of auto, local, docker"]),
    (["lab", "up", "--backend", "kubernetes"], ["kubernetes backend is not available", "use backend='local'"]),
    (["lab", "up", "--time-scale", "-1"], ["time_scale=-1.0 is out of range", "from 0.01 to 10.0"]),
    (["lab", "up", "--validators", "100"], ["validators=100 is out of range", "from 1 to 16"]),
    (["run", "nope"], ["'nope' is neither a scenario id nor a notebook file", "node-down"]),
    (["run", "node-down", "--timeout", "-5"], ["cell timeout -5.0 is out of range", "like 900"]),
    (["run", "node-down", "-p", "time_scale", "100"], ["time_scale=100 is out of range", "from 0.01 to 10.0"]),
    (["run", "node-down", "-p", "mode", "exam"], ["mode='exam' is invalid", "'batch'"]),
    (["chaos", "pause", TARGET], [f"'{TARGET}'", "has no targets yet", "incidentlab lab up"]),
    (["chaos", "cpu-stress", TARGET, "--", "-5s"], ["invalid duration '-5s'", "like 100ms, 2s or 1m"]),
    (["chaos", "latency", TARGET, "soon"], ["invalid duration 'soon'", "like 100ms"]),
]


@pytest.mark.parametrize("args, expected", NO_LAB_CASES, ids=[" ".join(args) for args, _ in NO_LAB_CASES])
def test_cli_rejects_bad_value(tmp_path, args, expected):
    result = incidentlab(tmp_path / "lab", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    for text in expected:
        assert text in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "lab" / "localnet" / "network.json").exists()


def test_cli_rejects_home_that_is_a_file(tmp_path):
    home = tmp_path / "not-a-folder"
    home.write_text("")
    result = incidentlab(tmp_path, "--home", str(home), "lab", "status")
    assert result.returncode == 2, result.stderr
    assert f"lab home '{home}' cannot be used" in result.stderr
    assert "--home or INCIDENTLAB_HOME" in result.stderr


# -- the CLI and the Lab API against a running lab ------------------------------------------

#: Arguments against a running lab at time_scale 0.1, then texts the error must contain.
LAB_CASES = [
    (["chaos", "pause", "virtengine-nope"], ["'virtengine-nope'", "known targets: virtengine-client"]),
    (["chaos", "kill", "postgres"], ["'postgres'", "incidentlab lab status"]),
    (["chaos", "cpu-stress", TARGET, "1000000s"], ["duration 1000000s is out of range", "at most 8640s"]),
    (["chaos", "cpu-stress", TARGET, "0s"], ["duration 0s is out of range", "more than 0s"]),
    (["chaos", "pause-cycle", TARGET, "--paused", "0s"], ["--paused 0s is out of range"]),
    (["chaos", "pause-cycle", TARGET, "--cycles", "-1"], ["cycles=-1 is invalid", "from 1 to 10000"]),
    (["chaos", "latency", TARGET, "0ms"], ["latency 0ms is out of range", "1ms to 60s"]),
    (["chaos", "latency", TARGET, "100000s"], ["latency 100000000ms is out of range", "1ms to 60s"]),
    (["chaos", "latency", "virtengine-gateway"], ["not on 'virtengine-gateway'", "pause or stop it instead"]),
    (["chaos", "unpause", TARGET], [f"{TARGET} is not paused", "nothing to unpause"]),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with running_lab("local", tmp_path_factory.mktemp("bad-input") / "lab") as lab:
        yield lab


@pytest.mark.parametrize("args, expected", LAB_CASES, ids=[" ".join(args) for args, _ in LAB_CASES])
def test_cli_rejects_bad_value_on_running_lab(lab, args, expected):
    journal_before = Journal(lab.config.home).entries()
    result = incidentlab(lab.config.home, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    for text in expected:
        assert text in result.stderr
    assert "Traceback" not in result.stderr
    assert Journal(lab.config.home).entries() == journal_before
    assert {lab.inspect(name)["Status"] for name in lab.backend.targets()["NAME"]} == {"running"}


#: A Lab API call (on the running lab), the error class and texts its message must contain.
API_CASES = [
    ("unknown backend", lambda lab: Lab.connect("nope", home=lab.config.home), ConfigError, ["'nope'", "choose one of"]),
    ("unknown scenario", lambda lab: lab.simulation("nope"), ScenarioError, ["'nope'", "known scenarios: "]),
    ("unknown target", lambda lab: lab.fault("pause", "virtengine-nope"), TargetNotFound, ["known targets"]),
    ("unknown fault kind", lambda lab: lab.fault("flood", TARGET), ConfigError, ["'flood'", "use one of"]),
    ("negative stop timeout", lambda lab: lab.stop(TARGET, timeout=-1), ConfigError, ["timeout=-1", "0 or more"]),
    ("NaN stress duration", lambda lab: lab.fault("cpu-stress", TARGET, duration=float("nan")), ConfigError,
     ["duration=nan", "to 86400 seconds"]),
    ("absurd cycle time", lambda lab: lab.fault("pause-cycle", TARGET, running=1e9), ConfigError,
     ["running=1000000000.0", "to 86400 seconds"]),
    ("text as duration", lambda lab: lab.fault("cpu-stress", TARGET, duration="10s"), ConfigError,
     ["duration='10s'", "number of seconds"]),
    ("negative delay", lambda lab: lab.fault("latency", TARGET, delay=-0.1), ConfigError, ["delay=-0.1", "0.001 to 60"]),
    ("negative latency duration", lambda lab: lab.fault("latency", TARGET, duration=-1), ConfigError,
     ["duration=-1", "None or 1 to"]),
    ("negative probe interval", lambda lab: lab.heights(count=1, interval=-1), ConfigError, ["interval=-1"]),
    ("negative history interval", lambda lab: lab.state_history(count=1, interval=-1), ConfigError,
     ["interval=-1", "from 0 to 300"]),
    ("negative watch", lambda lab: lab.watch_requests(-5, mode="batch"), ConfigError, ["seconds=-5", "0 to 3600"]),
    ("negative error window", lambda lab: lab.error_increase(window=-5), ConfigError, ["window=-5"]),
    ("unknown signal", lambda lab: lab.fault("kill", TARGET, signal="SIGBOGUS"), ConfigError,
     ["signal='SIGBOGUS'", "like 'SIGKILL'"]),
    ("unknown variant", lambda lab: lab.simulation("node-down", variant="three-down"), ConfigError,
     ["'three-down'", "one-down, two-down"]),
    ("unknown mode", lambda lab: lab.simulation("node-down", mode="exam"), ConfigError, ["mode='exam'", "'batch'"]),
    ("no Prometheus for query", lambda lab: lab.query("up"), ConfigError, ["no Prometheus", "--prometheus"]),
]


@pytest.mark.parametrize("call, error, expected", [case[1:] for case in API_CASES], ids=[case[0] for case in API_CASES])
def test_lab_api_rejects_bad_value(lab, call, error, expected):
    with pytest.raises(error) as caught:
        call(lab)
    for text in expected:
        assert text in str(caught.value)
    assert Journal(lab.config.home).open_entries() == []


def test_unreachable_prometheus_named():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    with PrometheusClient(f"http://127.0.0.1:{port}", timeout=2) as client:
        with pytest.raises(PrometheusError) as caught:
            client.query("up")
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "incidentlab lab up --prometheus" in str(caught.value)


# -- incident records ------------------------------------------------------------------------


def test_corrupt_record_named_and_skipped(tmp_path):
    store = IncidentStore(tmp_path)
    good = Incident(id=store.new_id(), scenario="node-down", title="t", learner="ada", seed=1)
    good.add_event("fault_injected", "lab", "stopped a validator")
    store.save(good)
    corrupt = store.record_path(store.new_id())
    corrupt.write_text('{"schema_version": 1, "id": "trunc')

    with pytest.raises(RecordError) as caught:
        store.load(corrupt.stem)
    assert str(corrupt) in str(caught.value)
    assert "Fix the file by hand, or move it out" in str(caught.value)
    assert [incident.id for incident in store.list()] == [good.id]
    assert store.new_id() not in (good.id, corrupt.stem)

    result = incidentlab(tmp_path, "report")
    assert result.returncode == 0, result.stderr
    assert str(corrupt) in result.stderr
    assert store.load(good.id).to_json() == good.to_json()


SAVER = textwrap.dedent("""
    import sys
    from incidentlab.incident.record import Incident, IncidentStore
    store = IncidentStore(sys.argv[1])
    incident = Incident(id=sys.argv[2], scenario="node-down", title="t", learner="ada", seed=1)
    for number in range(1_000_000):
        incident.add_event("note", "lab", f"note {number} " + "x" * 2000)
        store.save(incident)
        print(number, flush=True)
""")


def test_record_survives_writer_killed_mid_save(tmp_path):
    store = IncidentStore(tmp_path)
    incident_id = store.new_id()
    rng = random.Random(5)
    saved = -1
    for delay in (rng.uniform(0.05, 0.4) for _ in range(4)):
        writer = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path), incident_id],
                                  stdout=subprocess.PIPE, text=True)
        writer.stdout.readline()
        time.sleep(delay)
        writer.send_signal(signal.SIGKILL)
        printed = writer.stdout.read().split()
        writer.wait(timeout=10)
        writer.stdout.close()
        saved = int(printed[-1]) if printed else 0

        record = json.loads(store.record_path(incident_id).read_text())
        # The file contains the last completed save or the one in flight when the kill landed.
        assert len(record["timeline"]) - 1 in (saved, saved + 1)
        assert store.load(incident_id).id == incident_id
    assert saved > 0


@pytest.mark.parametrize("text", ["apiVersion: v1\nclusters: [unclosed\n", "just text\n", "- a list\n"])
def test_malformed_kubeconfig_named(tmp_path, monkeypatch, text):
    from incidentlab.backends.kubernetes import ProviderCluster
    from incidentlab.config import LabConfig

    path = tmp_path / "kubeconfig"
    path.write_text(text)
    monkeypatch.setenv("KUBECONFIG", str(path))
    config = LabConfig(home=tmp_path / "lab", kube_context="kind-incidentlab")
    with pytest.raises(ConfigError) as caught:
        ProviderCluster.from_kubeconfig(config)
    assert str(path) in str(caught.value)
    assert "KUBECONFIG" in str(caught.value)

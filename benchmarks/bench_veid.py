"""Measure what the VEID service costs a localnet: start-up time with and without it, and its idle CPU.

Starts real localnets on 127.0.0.1 in temporary lab homes and prints a Markdown table.
Usage: python benchmarks/bench_veid.py [--runs 3] [--idle 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Measure the incidentlab of this checkout, even when another copy is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from incidentlab.config import LabConfig  # noqa: E402
from incidentlab.localnet.network import create_network  # noqa: E402
from incidentlab.localnet.supervisor import Localnet  # noqa: E402


def start_seconds(with_veid: bool, time_scale: float) -> float:
    """Return the seconds Localnet.up() takes on a new lab home, with or without the VEID service."""
    with tempfile.TemporaryDirectory() as home:
        config = LabConfig(home=Path(home), backend="local", validators=4, time_scale=time_scale, classic_ports=False)
        localnet = Localnet(config)
        create_network(config.localnet_dir, chain_id=config.chain_id, validators=4, time_scale=time_scale,
                       classic_ports=False)
        if not with_veid:
            path = config.localnet_dir / "network.json"
            data = json.loads(path.read_text())
            data["services"] = [s for s in data["services"] if s["kind"] != "veid"]
            path.write_text(json.dumps(data))
        started = time.monotonic()
        localnet.up()
        elapsed = time.monotonic() - started
        localnet.down(timeout=0.5)
        return elapsed


def idle_cpu(time_scale: float, seconds: float) -> float:
    """Return the VEID process's CPU use in cores over ``seconds``, after a 30 s warm-up."""
    with tempfile.TemporaryDirectory() as home:
        config = LabConfig(home=Path(home), backend="local", validators=4, time_scale=time_scale, classic_ports=False)
        localnet = Localnet(config)
        localnet.up()
        try:
            pid = localnet.state("virtengine-veid")["pid"]
            # At 8 verifications/s (time_scale 0.1) this fills the stream's pool of 128 captures;
            # at 1/s (time_scale 1) it does not, so that figure includes drawing captures.
            time.sleep(30)
            before = _cpu_seconds(pid)
            time.sleep(seconds)
            return (_cpu_seconds(pid) - before) / seconds
        finally:
            localnet.down(timeout=0.5)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="start-ups measured per case")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of CPU measurement after warm-up")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print("| measure | time_scale 0.1 | time_scale 1 |\n| --- | ---: | ---: |")
    for with_veid in (False, True):
        cells = []
        for scale in (0.1, 1.0):
            runs = [start_seconds(with_veid, scale) for _ in range(args.runs)]
            cells.append(f"{statistics.median(runs):.2f} ({min(runs):.2f}-{max(runs):.2f})")
        print(f"| up() seconds, {'with' if with_veid else 'without'} virtengine-veid | {' | '.join(cells)} |")
    cpu = [f"{idle_cpu(scale, args.idle):.3f}" for scale in (0.1, 1.0)]
    print(f"| virtengine-veid CPU after warm-up (cores) | {' | '.join(cpu)} |")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Preflight checks before a simulation: every validator's RPC and the chain's progress."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .rpc import probe_status

if TYPE_CHECKING:
    import pandas as pd

    from ..lab import Lab

__all__ = ["preflight"]


def preflight(lab: "Lab") -> "pd.DataFrame":
    """Return a table of checks (check, ok, observed, meaning) for the lab's targets and chain."""
    import pandas as pd

    rows = []
    first = {name: probe_status(url, lab.probe_timeout) for name, url in lab.endpoints().items()}
    for name, sample in first.items():
        observed = f"height {sample['height']}" if sample["ok"] else f"{sample['error']}: {sample['detail']}"
        rows.append(_row(f"{name} RPC healthy", sample["ok"], observed,
                         "answers /status" if sample["ok"] else "start it: lab.start(name), or `incidentlab lab up`"))

    # Two blocks' worth of waiting shows whether the chain is progressing.
    time.sleep(2.5 * lab.block_time)
    second = {name: probe_status(url, lab.probe_timeout) for name, url in lab.endpoints().items()}
    before = max((s["height"] for s in first.values() if s["ok"]), default=0)
    after = max((s["height"] for s in second.values() if s["ok"]), default=0)
    rows.append(_row("chain progressing", after > before, f"height {before} -> {after}",
                     "blocks are being committed" if after > before
                     else "no new block: fewer than 2/3 of the voting power may be online"))
    return pd.DataFrame(rows, columns=["check", "ok", "observed", "meaning"])


def _row(check: str, ok: bool, observed: str, meaning: str) -> dict:
    return {"check": check, "ok": bool(ok), "observed": observed, "meaning": meaning}

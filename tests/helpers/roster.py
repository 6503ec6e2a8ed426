"""Decision files for grading tests, in the export format of the report cell."""

from __future__ import annotations

import copy
import json
from pathlib import Path

#: Every decision right for node-down seed 2 (one-down: virtengine-node-2 killed).
NODE_DOWN_SEED_2 = {
    "schema": "incidentlab/decisions", "schema_version": 1,
    "learner": "ada", "scenario": "node-down", "seed": 2,
    "incident_id": "INC-20261204-001", "exported_at": "2026-12-04T21:40:00.123456Z",
    "decisions": {
        "acknowledge": True,
        "triage": {"severity": "SEV-3", "affected_services": ["block-production"],
                   "user_impact": "One block in four arrives late.", "failure_rate": 0.0},
        "status": ["Investigating", "Identified", "Monitoring", "Resolved"],
        "status_updates": [
            {"status": "Investigating", "conditions": "Blocks arrive late.", "actions": "Probing every RPC.",
             "needs": "Nothing yet.", "next_update_due": "2026-12-04T21:41:00Z", "time": "2026-12-04T21:40:10Z"},
            {"status": "Monitoring", "conditions": "virtengine-node-2 is catching up.",
             "actions": "Watching the heights.", "needs": None, "next_update_due": "2026-12-04T21:42:00Z",
             "time": "2026-12-04T21:40:40Z"},
        ],
        "diagnosis": {"category": "container or orchestration", "target": "virtengine-node-2",
                      "evidence": "virtengine-node-2 exited with code 137."},
        "root_cause": "The virtengine-node-2 process was killed.",
        "resolution": "Started virtengine-node-2; it caught up from its peers.",
        "action_items": [{"type": "prevent", "text": "Find what sent SIGKILL."}],
        "lessons_learned": "One of four validators down slows the chain without halting it.",
    },
    "actions": [{"action": "start", "target": "virtengine-node-2", "options": {}, "time": "2026-12-04T21:40:20Z"}],
    "timeline": [],
}


def decision_file(**changes) -> dict:
    """Return a copy of NODE_DOWN_SEED_2 with top-level keys replaced; a keyword decisions_<key> replaces decisions[<key>]."""
    data = copy.deepcopy(NODE_DOWN_SEED_2)
    for key, value in changes.items():
        if key.startswith("decisions_"):
            data["decisions"][key.removeprefix("decisions_")] = value
        else:
            data[key] = value
    return data


def write(folder: Path, name: str, data: dict | str) -> Path:
    """Write a decision file (a dict as JSON, a string as it is) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2), encoding="utf-8")
    return path

"""Simulation: one incident a learner lives through, from the injected fault to the report.

The simulation owns the incident record. It writes the fault's ground-truth time, lets the
probes write the first failure, records the learner's decisions and the lab's actions, and
lets only the probes decide whether the system has recovered.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError, ScenarioError
from ..incident.record import Incident, IncidentStore
from .answers import load_answers
from .decisions import LearnerDecisions

if TYPE_CHECKING:
    import pandas as pd

    from ..lab import Lab

__all__ = ["Simulation", "Verification", "Report", "MODES"]

logger = logging.getLogger(__name__)

MODES = ("interactive", "batch")
REPORT_MIME = "application/vnd.incidentlab.report+json"


@dataclasses.dataclass
class Verification:
    """The probes' verdict: ``ok`` when every check passed; ``checks`` has one row per check."""

    ok: bool
    checks: "pd.DataFrame"
    verified_at: _dt.datetime | None

    def __repr__(self) -> str:
        verdict = "recovered" if self.ok else "NOT recovered"
        return f"Verification: {verdict}\n{self.checks.to_string(index=False)}"

    def _repr_html_(self) -> str:
        verdict = "recovered" if self.ok else "NOT recovered"
        return f"<p><b>Verification: {verdict}</b></p>" + self.checks.to_html(index=False)


@dataclasses.dataclass
class Report:
    """The rendered incident report, the paths it was saved to, the record as JSON and the decision file."""

    markdown: str
    markdown_path: Path
    json_path: Path
    record: dict
    decisions_path: Path | None = None

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        # The JSON part lets a papermill run be read back without parsing the Markdown.
        shown = self.markdown
        if self.decisions_path is not None:
            shown += f"\n---\n\nDecision file to submit for grading: `{self.decisions_path}`\n"
        return {"text/markdown": shown, REPORT_MIME: self.record, "text/plain": shown}


class Simulation(LearnerDecisions):
    """Base class of the simulations; subclasses define the fault, the checks and the impact."""

    scenario_id = ""
    title = ""
    services: tuple[str, ...] = ()

    def __init__(self, lab: "Lab", *, learner: str = "learner", seed: int = 0, mode: str = "interactive",
                 answers_path: str | Path | None = None, variant: str | None = None) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode={mode!r} is invalid; use 'interactive' (widgets and your own calls) "
                              "or 'batch' (decisions from answers_path)")
        if mode == "batch" and not answers_path:
            raise ConfigError("mode='batch' needs answers_path= the answers file to read decisions from")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed={seed!r} is invalid; use a whole number")
        self.lab = lab
        self.learner = learner or "learner"
        self.seed = seed
        self.mode = mode
        self.answers = load_answers(answers_path) if answers_path else {}
        self.rng = random.Random(f"{self.scenario_id}:{seed}")
        self.variant = self.choose_variant(variant)
        self._check_answer_actions(answers_path)
        self.store = IncidentStore(lab.config.home)
        self.incident: Incident | None = None
        self.active = False
        self.injected_at: _dt.datetime | None = None
        self._lock = threading.Lock()
        self._sampler = None

    # -- to be defined by each scenario --------------------------------------------------

    def choose_variant(self, name: str | None) -> dict:
        raise NotImplementedError

    def apply_fault(self) -> None:
        raise NotImplementedError

    def revert_fault(self) -> list[str]:
        """Undo whatever of the fault is still in place; return what was undone."""
        raise NotImplementedError

    def recovery_checks(self) -> list[dict]:
        """Return the checks that decide recovery: dicts with check, ok, observed, expected."""
        raise NotImplementedError

    def impact(self) -> dict:
        return {}

    # -- the incident, step by step -------------------------------------------------------

    def inject(self) -> str:
        """Start the incident: create the record, start the probes and apply the fault.

        Returns a one-line notice for the learner that does not reveal the target.
        """
        if self.active or self.incident is not None:
            raise ScenarioError(f"simulation {self.scenario_id!r} was already injected; create a new one to run again")
        self.incident = Incident(id=self.store.new_id(), scenario=self.scenario_id, title=self.title,
                                 learner=self.learner, seed=self.seed, time_scale=self.lab.config.time_scale)
        self._start_probes()
        self.active = True
        self.injected_at = _dt.datetime.now(_dt.timezone.utc)
        self.apply_fault()
        targets = ", ".join(self.variant.get("targets", []))
        self._event("fault_injected", "lab", f"{self.variant['name']}: {self.variant.get('summary', '')}"
                    + (f" ({targets})" if targets else ""), time=self.injected_at, variant=self.variant["name"])
        self.save()
        logger.info("simulation %s injected incident=%s learner=%s seed=%d variant=%s",
                    self.scenario_id, self.incident.id, self.learner, self.seed, self.variant["name"])
        return (f"{self.incident.id}: fault injected at {self.injected_at:%H:%M:%S} UTC. "
                "Begin incident response!")

    def remediation_actions(self) -> dict[str, Callable[..., Any]]:
        """Return the actions an answers file may replay, by name: ``callable(target, **options)``.

        The lab's target actions and ``halt``; a scenario with its own remedies (a rollback,
        a quota replacement) adds them, and each must record itself through record_action().
        """
        lab = self.lab
        actions = {name: getattr(lab, name) for name in ("start", "stop", "restart", "pause", "unpause", "kill")}
        actions["halt"] = lambda target=None, **options: lab.halt()
        return actions

    def remediate(self) -> "pd.DataFrame":
        """Replay the answers file's actions through the lab (batch mode), then list every action taken.

        In interactive mode this runs nothing: call the lab yourself (``lab.start(name)``)
        and run this again to see the actions recorded.
        """
        import pandas as pd

        self._require_incident()
        if self.mode == "batch":
            actions = self.remediation_actions()
            for action in self.answers.get("actions", []):
                options = {k: v for k, v in action.items() if k not in ("action", "target")}
                actions[action["action"]](action.get("target"), **options)
        rows = [{"time": e.time, "action": e.data.get("action"), "target": e.data.get("target"),
                 "status after": e.data.get("status")} for e in self.incident.timeline if e.kind == "action"]
        return pd.DataFrame(rows, columns=["time", "action", "target", "status after"])

    def record_action(self, action: str, target: str, state: dict, **options: Any) -> None:
        """Add a remediation call made through the lab to the timeline (the lab calls this).

        ``options`` are the call's keyword arguments; they are kept so that grading can replay
        the call, with values that JSON cannot hold turned into text.
        """
        if self.incident is None:
            return
        kept = {key: value if _json_ready(value) else str(value) for key, value in options.items()}
        with self._lock:
            self.incident.add_event("action", "learner", f"{action} {target}", action=action, target=target,
                                    status=state.get("Status"), options=kept)
        self.save()

    def record_fault(self, kind: str, message: str, when: _dt.datetime | None, **data: Any) -> None:
        """Add a chaos fault's injection or revert to the timeline, at its ground-truth time."""
        if self.incident is None:
            return
        self._event(kind, "chaos", message, time=when, **data)
        self.save()

    def verify(self, timeout: float | None = None) -> Verification:
        """Poll the recovery checks until all pass or ``timeout`` seconds pass, then record the verdict."""
        import pandas as pd

        self._require_incident()
        timeout = timeout if timeout is not None else max(10.0, 40 * self.lab.block_time)
        deadline = time.monotonic() + timeout
        while True:
            checks = self.recovery_checks()
            ok = all(check["ok"] for check in checks)
            if ok or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, self.lab.block_time))
        verified_at = _dt.datetime.now(_dt.timezone.utc) if ok else None
        if ok and self.incident.first("recovery_verified") is None:
            self._event("recovery_verified", "probe", "every recovery check passed", time=verified_at)
        logger.info("verification incident=%s ok=%s", self.incident.id, ok)
        self.save()
        return Verification(ok, pd.DataFrame(checks, columns=["check", "ok", "observed", "expected"]), verified_at)

    def report(self, root_cause: str | None = None, resolution: str | None = None,
               action_items: list[dict] | None = None, lessons_learned: str | None = None) -> Report:
        """Render and save the incident report (Markdown and JSON under the lab home's incidents/).

        Also writes the decision file to submit for grading (under the lab home's submissions/).
        """
        from ..incident.communication import flag_overdue
        from ..incident.decisions import save_decisions
        from ..incident.report import render_report, save_report

        self._require_incident()
        for key, value in (("root_cause", root_cause), ("resolution", resolution),
                           ("action_items", action_items), ("lessons_learned", lessons_learned)):
            value = value if value is not None else self.answers.get(key)
            if value is not None:
                self.incident.decisions[key] = value
        self.incident.impact = self.impact()
        with self._lock:
            flag_overdue(self.incident)
        markdown_path, json_path = save_report(self.incident, self.store)
        decisions_path = save_decisions(self.incident, self.store)
        return Report(render_report(self.incident), markdown_path, json_path, self.incident.to_json(),
                      decisions_path)

    def close(self) -> list[str]:
        """Stop the probes and undo whatever of the fault is still in place; return what was undone."""
        if not self.active:
            return []
        undone = self.revert_fault()
        # After a verified recovery the fault no longer hurt; what remains is the lab's own tidying.
        recovered = self.incident is not None and self.incident.first("recovery_verified") is not None
        prefix = "lab cleanup after the verified recovery" if recovered else "fault still in place at close, reverted"
        for item in undone:
            self._event("note", "lab", f"{prefix}: {item}")
        if self._sampler is not None:
            self._sampler.stop()
        self.active = False
        self.save()
        return undone

    # -- probes ------------------------------------------------------------------------

    def heights(self) -> "pd.DataFrame":
        """Return every probe sample taken since inject(): time, target, ok, height, catching_up, ..."""
        return self._sampler.frame() if self._sampler is not None else None

    def plot_heights(self):
        """Plot block height per validator over time, with the fault and each action marked."""
        from ..live import plot_block_height

        return plot_block_height(self.heights(), self.incident.timeline if self.incident else [])

    def _start_probes(self) -> None:
        from ..probes.sampler import HeightSampler

        interval = max(0.1, min(1.0, self.lab.block_time / 2))
        self._sampler = HeightSampler(self.lab.endpoints(), interval=interval, timeout=self.lab.probe_timeout,
                                      on_sample=self._on_sample)
        self._sampler.start()

    def _on_sample(self, sample: dict) -> None:
        if not self.active or sample["ok"] or self.incident is None:
            return
        with self._lock:
            if self.incident.first("probe_failed") is not None:
                return
            self.incident.add_event("probe_failed", "probe",
                                    f"{sample['target']} ({sample['error']})",
                                    time=sample["time"], target=sample["target"], error=sample["error"])

    # -- helpers -------------------------------------------------------------------------

    def save(self) -> None:
        if self.incident is not None:
            with self._lock:
                self.store.save(self.incident)

    def _event(self, kind: str, source: str, message: str, time: _dt.datetime | None = None, **data: Any) -> None:
        with self._lock:
            self.incident.add_event(kind, source, message, time=time, **data)

    def _check_answer_actions(self, answers_path: str | Path | None) -> None:
        from ..errors import AnswerFileError

        known = self.remediation_actions()
        for index, action in enumerate(self.answers.get("actions", [])):
            if action["action"] not in known:
                raise AnswerFileError(str(answers_path), f"{answers_path}: field 'actions[{index}].action' has the "
                                      f"invalid value {action['action']!r}; scenario {self.scenario_id!r} can "
                                      f"replay {', '.join(sorted(known))}", f"actions[{index}].action")

    def _require_incident(self) -> None:
        if self.incident is None:
            raise ScenarioError(f"simulation {self.scenario_id!r} has not started; call inject() first")


def _json_ready(value: Any) -> bool:
    """Return True when json.dumps accepts ``value``, so that a replayed call gets a mapping back rather than its text."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True

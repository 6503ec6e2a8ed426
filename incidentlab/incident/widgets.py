"""ipywidgets forms that fill the learner's decisions and record them in the incident's timeline.

Each form edits one decision kind. Its submit button checks the values against the kind's
JSON schema and shows each problem beside its field, and it records the decision only when
all pass. Batch runs never build a form: their decisions come from the answers file.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import logging
from typing import Any, Callable

from ..errors import IncidentLabError
from .schemas import MISSING, errors as schema_errors

__all__ = ["Field", "DecisionForm", "parse_action_items"]

logger = logging.getLogger(__name__)

_ERROR_STYLE = "color:#b00020"
_DONE_STYLE = "color:#1b5e20"


@dataclasses.dataclass
class Field:
    """One field of a form: its name in the decision, the input widget and how to read a value from it.

    ``read`` turns the widget's value into the decision's value (None leaves the field out).
    """

    name: str
    widget: Any
    read: Callable[[Any], Any] = lambda value: value if value not in ("", None, ()) else None

    def __post_init__(self) -> None:
        import ipywidgets as widgets

        self.error = widgets.HTML(value="", layout=widgets.Layout(margin="0 0 0 8px"))
        self.row = widgets.HBox([self.widget, self.error])

    def value(self) -> Any:
        return self.read(self.widget.value)


class DecisionForm:
    """A form for one decision ``kind`` (a schema name) that calls ``on_submit(decision)`` when valid.

    ``on_submit`` may raise an IncidentLabError with a ``field`` attribute (like AnswerFileError)
    for a rule the schema cannot know, such as a service the scenario does not have. The error
    is then shown beside that field. Display the form by making it a cell's last expression.
    """

    def __init__(self, kind: str, title: str, fields: list[Field], on_submit: Callable[[dict], Any], *,
                 button: str = "Record", learner: str = "") -> None:
        import ipywidgets as widgets

        self.kind, self.fields, self.on_submit, self.learner = kind, {f.name: f for f in fields}, on_submit, learner
        self.button = widgets.Button(description=button, button_style="primary", icon="check")
        self.message = widgets.HTML(value="")
        self.button.on_click(lambda _button: self.submit())
        self.result: Any = None
        header = widgets.HTML(value=f"<b>{html.escape(title)}</b>")
        self.widget = widgets.VBox([header, *(f.row for f in fields), widgets.HBox([self.button, self.message])])

    def values(self) -> dict[str, Any]:
        """Return the decision as the fields hold it now, leaving out empty fields."""
        values = {name: field.value() for name, field in self.fields.items()}
        return {name: value for name, value in values.items() if value is not None}

    def submit(self) -> Any:
        """Check the values, show problems beside their fields, and record the decision when all pass.

        Returns what on_submit returned, or None when a problem stopped the recording.
        """
        for field in self.fields.values():
            field.error.value = ""
        try:
            decision = self.values()
        except ValueError as exc:  # a field whose text could not be read, named by the exception
            return self._fail([(getattr(exc, "field", ""), None, str(exc))])
        problems = schema_errors(self.kind, decision)
        if problems:
            return self._fail(problems)
        try:
            self.result = self.on_submit(decision)
        except IncidentLabError as exc:
            return self._fail([(getattr(exc, "field", None) or "", None, str(exc))], raw=True)
        when = _dt.datetime.now(_dt.timezone.utc)
        self.message.value = f"<span style='{_DONE_STYLE}'>Recorded at {when:%H:%M:%S} UTC.</span>"
        logger.info("form %s submitted learner=%s", self.kind, self.learner)
        return self.result

    def _fail(self, problems: list[tuple[str, Any, str]], raw: bool = False) -> None:
        unplaced = []
        for field_path, value, rule in problems:
            name = field_path.split("[")[0].split(".")[0]
            if raw or value is None:
                text = rule
            else:
                text = f"required: {rule}" if value is MISSING else f"{value!r}: {rule}"
            if name in self.fields:
                self.fields[name].error.value = f"<span style='{_ERROR_STYLE}'>{html.escape(text)}</span>"
            else:
                unplaced.append(text)
        summary = "; ".join(unplaced) or f"{len(problems)} field(s) to fix, shown beside them"
        self.message.value = f"<span style='{_ERROR_STYLE}'>Not recorded: {html.escape(summary)}</span>"
        logger.info("form %s rejected learner=%s: %d problem(s)", self.kind, self.learner, len(problems))
        return None

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.widget._repr_mimebundle_(include=include, exclude=exclude)


def parse_action_items(text: str) -> list[dict] | None:
    """Read action items written one per line as "TYPE: text" (TYPE is prevent, mitigate or process).

    Returns a list of {"type", "text"} or None for empty text. A line without "TYPE:" keeps
    its text and an empty type, which the schema then rejects by name.
    """
    items = []
    for line in (text or "").splitlines():
        line = line.strip().lstrip("-* ").strip()
        if not line:
            continue
        kind, sep, rest = line.partition(":")
        items.append({"type": kind.strip().lower(), "text": rest.strip()} if sep else {"type": "", "text": line})
    return items or None

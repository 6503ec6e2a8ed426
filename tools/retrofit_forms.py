"""Put the decision forms into notebooks 01 and 02: triage, status updates, diagnosis and postmortem.

Run once from the repository root: python tools/retrofit_forms.py. Cells are matched by their
source, so running it twice changes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

FORM_NOTE = ("In interactive mode fill in the form below and press its button: a problem shows beside its "
             "field, and nothing is recorded until every field passes.\n"
             "In batch mode the answers file supplies the decision and no form is shown.")
UPDATE_NOTE = ("## Communicate\n\n"
               "Stakeholders need to hear from you on a cadence that the severity sets: at least as often as "
               "its response target (SEV-1 every 15 minutes, SEV-2 every 30, in lab time: the time scale "
               "compresses it too).\n"
               "Say what users see (conditions), what you are doing (actions) and what you need.\n"
               "A late update is flagged in the timeline and in the report.")
SECOND_UPDATE_NOTE = "Tell stakeholders that the fix is in and that you are watching the recovery:"
POSTMORTEM_NOTE = ("## Postmortem notes\n\n"
                   "Write down the root cause (the cause, not the symptom), what restored the service, the "
                   "follow-up action items (one per line, typed `prevent:`, `mitigate:` or `process:`) and what "
                   "you learned.\n"
                   "The report and the debrief notebook use them.")
COMMUNICATION_NOTE = "Every status update you posted, when the next one was due, and whether it came on time:"


def code(source: str):
    return nbformat.v4.new_code_cell(source)


def markdown(source: str):
    return nbformat.v4.new_markdown_cell(source)


def retrofit(path: Path) -> bool:
    notebook = nbformat.read(path, as_version=4)
    sources = [cell.source for cell in notebook.cells]
    if 'sim.form("triage")' in sources:
        return False
    cells = []
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## Triage"):
            lines = [line for line in cell.source.splitlines()
                     if not line.startswith(("In interactive mode", "In batch mode"))]
            cell.source = "\n".join(lines).rstrip() + "\n\n" + FORM_NOTE
        if cell.cell_type == "markdown" and cell.source.startswith("## Report"):
            cells += [markdown(POSTMORTEM_NOTE), code('sim.form("postmortem")'),
                      markdown(COMMUNICATION_NOTE), code("sim.communication()")]
        if cell.cell_type == "code" and cell.source == "sim.triage()":
            cell.source = 'sim.form("triage")'
        elif cell.cell_type == "code" and cell.source == "sim.diagnose()":
            cell.source = 'sim.form("diagnosis")'
        cells.append(cell)
        if cell.cell_type == "code" and cell.source == 'sim.set_status("Investigating")':
            cells += [markdown(UPDATE_NOTE), code('sim.form("update")')]
        elif cell.cell_type == "code" and cell.source == 'sim.set_status("Monitoring")':
            cells += [markdown(SECOND_UPDATE_NOTE), code('sim.form("update")')]
    notebook.cells = cells
    nbformat.validate(notebook)
    nbformat.write(notebook, path)
    return True


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent / "notebooks"
    for name in sys.argv[1:] or ["01-high-error-rate.ipynb", "02-node-down.ipynb"]:
        print(name, "retrofitted" if retrofit(root / name) else "already has the forms")

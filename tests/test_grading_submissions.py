"""Decision files: validation errors name the file, field and problem; ids become safe file names;
strings stay data; to_answers() gives an answers file the notebooks accept."""

from __future__ import annotations

import json

import pytest
from helpers.roster import decision_file, write

from incidentlab.errors import AnswerFileError
from incidentlab.grading.scenarios import load_scenarios
from incidentlab.grading.submissions import find_submissions, load_submission, safe_name
from incidentlab.incident.decisions import to_answers
from incidentlab.scenarios.answers import load_answers


@pytest.fixture(scope="module")
def scenarios():
    return load_scenarios()


def test_valid_submission_loads(tmp_path, scenarios):
    submission = load_submission(write(tmp_path, "ada.json", decision_file()), scenarios)
    assert submission.learner == "ada"
    assert submission.key == "ada--node-down--seed-2"
    assert len(submission.sha256) == 64


@pytest.mark.parametrize("changes, field, problem", [
    ({"schema_version": 2}, "schema_version", "must be 1"),
    ({"decisions_triage": {"severity": "SEV-0"}}, "decisions.triage.severity", "'SEV-0'"),
    ({"seed": "7"}, "seed", "'7'"),
    ({"scenario": "disk-full"}, "scenario", "use a scenario with an answer key"),
    ({"actions": [{"action": "rm", "target": "virtengine-node-2", "options": {}}]}, "actions[0].action", "can replay"),
    ({"actions": [{"action": "start", "target": "/etc/passwd", "options": {}}]}, "actions[0].target",
     "like virtengine-node-1"),
    ({"actions": [{"action": "start", "target": "virtengine-node-2", "options": {"cmd": "id"}}]},
     "actions[0].options.cmd", "'start' takes no options"),
    ({"actions": [{"action": "kill", "target": "virtengine-node-2", "options": {"signal": ["SIGKILL"]}}]},
     "actions[0].options.signal", "use a string, a number, null, or a mapping"),
    ({"decisions_triage": {"severity": "SEV-3", "affected_services": ["mainframe"]}},
     "decisions.triage.affected_services", "'mainframe'"),
    ({"grade": 100}, "grade", "unknown field"),
])
def test_invalid_submission_names_field(tmp_path, scenarios, changes, field, problem):
    path = write(tmp_path, "bad.json", decision_file(**changes))
    with pytest.raises(AnswerFileError) as error:
        load_submission(path, scenarios)
    message = str(error.value)
    assert error.value.field == field
    assert message.startswith(f"bad.json: field {field!r} has the invalid value ")
    assert problem in message


def test_malformed_json_names_file(tmp_path, scenarios):
    path = write(tmp_path, "broken.json", '{"schema": "incidentlab/decisions", ')
    with pytest.raises(AnswerFileError) as error:
        load_submission(path, scenarios)
    assert "broken.json: not valid JSON" in str(error.value)
    assert "export the decision file again" in str(error.value)


def test_null_decisions_are_valid(tmp_path, scenarios):
    data = decision_file(decisions={"triage": None, "diagnosis": None, "acknowledge": None}, actions=[])
    submission = load_submission(write(tmp_path, "empty.json", data), scenarios)
    assert to_answers(submission.data) == {"learner": "ada", "acknowledge": False, "actions": []}


@pytest.mark.parametrize("learner", ["../../etc/passwd", "/abs/path", "..", "a/b\\c", "x" * 300, "ümlaut", ".hidden", ""])
def test_safe_name_stays_in_folder(tmp_path, learner):
    name = safe_name(learner)
    assert name
    assert "/" not in name
    assert "\\" not in name
    assert not name.startswith(".")
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_safe_name_keeps_ids_apart():
    assert safe_name("ada") == "ada"
    assert safe_name("a/da") != safe_name("a_da")
    assert safe_name("a/da") != safe_name("a\\da")


def test_code_strings_stay_data(tmp_path, scenarios):
    code = "__import__('os').system('touch pwned'); {{7*7}} ${HOME} $(id)"
    data = decision_file(learner="'; DROP TABLE grades; --", decisions_root_cause=code,
                         decisions_lessons_learned="<script>alert(1)</script>")
    submission = load_submission(write(tmp_path, "code.json", data), scenarios)
    answers = to_answers(submission.data)
    assert answers["root_cause"] == code
    assert answers["lessons_learned"] == "<script>alert(1)</script>"
    assert not (tmp_path / "pwned").exists()


def test_answers_pass_notebook_loader(tmp_path, scenarios):
    submission = load_submission(write(tmp_path, "ada.json", decision_file()), scenarios)
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(to_answers(submission.data)))
    answers = load_answers(path)
    assert answers["actions"] == [{"action": "start", "target": "virtengine-node-2"}]
    assert [update["status"] for update in answers["status_updates"]] == ["Investigating", "Monitoring"]
    assert answers["triage"]["severity"] == "SEV-3"
    assert answers["diagnosis"]["target"] == "virtengine-node-2"


def test_find_submissions_skips_symlinks(tmp_path):
    real = write(tmp_path / "elsewhere", "secret.json", decision_file())
    write(tmp_path / "subs", "ada.json", decision_file())
    (tmp_path / "subs" / "link.json").symlink_to(real)
    (tmp_path / "subs" / "notes.txt").write_text("not a submission")
    assert [path.name for path in find_submissions(tmp_path / "subs")] == ["ada.json"]


def test_missing_folder_is_clear_error(tmp_path):
    with pytest.raises(AnswerFileError, match="submissions folder .*not found"):
        find_submissions(tmp_path / "nope")


def test_null_and_mapping_options_valid(tmp_path, scenarios):
    data = decision_file(scenario="provider-deployment-failure", seed=2, decisions_triage=None,
                         actions=[{"action": "set_resources", "target": "lease-postgres",
                                   "options": {"requests": {"cpu": "250m"}, "namespace": None}}])
    submission = load_submission(write(tmp_path, "pat.json", data), scenarios)
    assert to_answers(submission.data)["actions"][0]["requests"] == {"cpu": "250m"}

"""Scenario files: the schema accepts the shipped ones, names the field of a broken one, and the
variants they draw for a seed are the ones the simulations draw."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from incidentlab.config import LabConfig
from incidentlab.errors import ConfigError
from incidentlab.grading.scenarios import load_scenario_file, load_scenarios
from incidentlab.lab import Lab
from incidentlab.backends.local import LocalBackend
from incidentlab.localnet.network import create_network
from incidentlab.scenarios import NOTEBOOKS, SCENARIOS, create

ROOT = Path(__file__).resolve().parent.parent
SCENARIO_DIR = ROOT / "data" / "scenarios"


def test_shipped_scenarios_match_schema():
    schema = json.loads((ROOT / "data" / "schemas" / "scenario.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in sorted(SCENARIO_DIR.glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema, cls=jsonschema.Draft202012Validator)


def test_every_simulation_has_scenario_file():
    keys = load_scenarios()
    assert set(SCENARIOS) <= set(keys)
    for key in keys.values():
        assert (ROOT / "notebooks" / key.notebook).is_file(), key.notebook
        assert NOTEBOOKS.get(key.id, key.notebook) == key.notebook


def test_broken_scenario_names_field(tmp_path):
    data = yaml.safe_load((SCENARIO_DIR / "node-down.yaml").read_text())
    data["variants"]["one-down"]["expected"]["severity"] = "SEV-9"
    path = tmp_path / "node-down.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as error:
        load_scenario_file(path)
    assert "variants.one-down.expected.severity" in str(error.value)
    assert "SEV-9" in str(error.value)
    assert "scenario.schema.json" in str(error.value)


def test_scenario_file_name_must_match_id(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text((SCENARIO_DIR / "node-down.yaml").read_text())
    with pytest.raises(ConfigError, match="name the file node-down.yaml"):
        load_scenario_file(path)


@pytest.fixture
def unstarted_lab(tmp_path):
    """A lab whose localnet is created but never started: the simulations can draw variants in it."""
    config = LabConfig(home=tmp_path / "lab", backend="local", time_scale=0.1, classic_ports=False)
    create_network(config.localnet_dir, chain_id=config.chain_id, validators=4, time_scale=0.1, classic_ports=False)
    return Lab(config, LocalBackend(config))


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_variants_agree_with_simulations(scenario, unstarted_lab):
    key = load_scenarios()[scenario]
    seen = set()
    for seed in range(40):
        drawn = create(scenario, unstarted_lab, seed=seed).variant
        expected = key.variant(seed)
        assert expected["name"] == drawn["name"], seed
        assert expected["targets"] == drawn["targets"], seed
        assert expected["expected_severity"] == drawn["expected_severity"], seed
        assert expected["expected_category"] == drawn["expected_category"], seed
        if "how" in drawn:
            assert expected["cause"] == drawn["how"], seed
        seen.add(expected["name"])
    assert seen == set(key.data["variants"]), "40 seeds should draw every variant"


def test_recorded_options_stay_json(unstarted_lab):
    from incidentlab.incident.record import Incident

    simulation = create("node-down", unstarted_lab, seed=2)
    simulation.incident = Incident(id="INC-20261204-001", scenario="node-down", title="t")
    simulation.record_action("set_resources", "lease-postgres", {"Status": "ok"},
                             requests={"cpu": "250m"}, timeout=10, clock=object())
    options = simulation.incident.timeline[-1].data["options"]
    assert options["requests"] == {"cpu": "250m"}
    assert options["timeout"] == 10
    assert options["clock"].startswith("<object object")

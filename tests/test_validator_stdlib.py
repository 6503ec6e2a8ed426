"""Validator, shim and supervisor need only the standard library: checked in subprocesses with an import hook.

Each subprocess runs with ``python -S`` (no site-packages, so nothing third-party is preloaded)
and a meta-path finder that raises ImportError for any module outside ``sys.stdlib_module_names``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

import incidentlab
from incidentlab.localnet.network import create_network

REPO_ROOT = Path(incidentlab.__file__).resolve().parents[1]
HOOK_MESSAGE = "is outside the standard library"
# Installed first in the child, so that every later import goes through it.
STDLIB_ONLY_HOOK = textwrap.dedent(f"""
    import sys

    ALLOWED = set(sys.stdlib_module_names) | {{"incidentlab"}}

    class StdlibOnlyFinder:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] not in ALLOWED:
                raise ImportError(f"import of {{name!r}} {HOOK_MESSAGE}")
            return None

    sys.meta_path.insert(0, StdlibOnlyFinder())
""")
SERVICE_MODULES = ("incidentlab.localnet.validator", "incidentlab.localnet.shim", "incidentlab.localnet.supervisor")


def run_python(code: str, *args: str, cwd: Path, stderr=subprocess.PIPE) -> subprocess.Popen:
    """Start ``python -S -c code args`` with the repository on PYTHONPATH and the hook installed first."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen([sys.executable, "-S", "-c", STDLIB_ONLY_HOOK + textwrap.dedent(code), *args],
                            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True)


def test_hook_rejects_third_party_import(tmp_path):
    # requests is installed here; under the hook its import must fail.
    process = run_python("import requests\n", cwd=tmp_path)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode != 0
    assert f"import of 'requests' {HOOK_MESSAGE}" in stderr


def test_service_modules_import_with_stdlib_only(tmp_path):
    code = f"""
        import importlib, json
        for name in {SERVICE_MODULES!r}:
            importlib.import_module(name)
        outside = sorted(
            name for name in sys.modules
            if name != "__main__" and name.partition(".")[0] not in ALLOWED
        )
        print(json.dumps({{"loaded": sorted(sys.modules), "outside": outside}}))
    """
    process = run_python(code, cwd=tmp_path)
    stdout, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["outside"] == []
    for name in SERVICE_MODULES:
        assert name in report["loaded"]


@pytest.mark.integration
def test_validator_commits_blocks_with_stdlib_only(tmp_path):
    # A single validator holds all the power, so it commits blocks on its own.
    network = create_network(tmp_path / "localnet", chain_id="stdlib-check-1", validators=1, time_scale=0.1,
                             classic_ports=False)
    spec = network.validators[0]
    code = """
        import runpy
        sys.argv[0] = "validator"
        runpy.run_module("incidentlab.localnet.validator", run_name="__main__", alter_sys=True)
    """
    log_path = tmp_path / "validator.log"
    with open(log_path, "w", encoding="utf-8") as log:
        process = run_python(code, "--network", network.path, "--name", spec.name, cwd=tmp_path, stderr=log)
    try:
        height = wait_for_height(spec, 3, process, log_path, timeout=20)
        process.terminate()
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    log_text = log_path.read_text(encoding="utf-8")

    assert height >= 3
    assert process.returncode == 0, log_text
    assert HOOK_MESSAGE not in log_text
    assert "committed block height=3" in log_text


def wait_for_height(spec, height: int, process: subprocess.Popen, log_path: Path, *, timeout: float) -> int:
    """Poll the validator's /status until it reports ``height``; fail when it exits or the time is up."""
    deadline = time.monotonic() + timeout
    with requests.Session() as http:
        http.trust_env = False
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"validator exited with code {process.returncode}:\n{log_path.read_text(encoding='utf-8')}")
            try:
                status = http.get(f"{spec.rpc_url}/status", timeout=1).json()
                latest = int(status["result"]["sync_info"]["latest_block_height"])
            except requests.RequestException:
                latest = 0
            if latest >= height:
                return latest
            time.sleep(0.05)
    pytest.fail(f"validator {spec.name} did not reach height {height} within {timeout} s")

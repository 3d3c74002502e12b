"""pykata-runtime: check, env, list, console."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def admin(*args, env=None, config=None):
    import os

    argv = [sys.executable, "-m", "shim.admin"]
    if config:
        argv += ["--config", str(config)]
    return subprocess.run(
        [*argv, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_check_names_what_is_missing(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(
        '[hypervisor.qemu]\nkernel = "/nope/vmlinuz"\naccel = "tcg"\nshared_fs = "none"\n'
    )
    result = admin("check", config=config)
    assert result.returncode == 1
    assert "[FAIL] guest kernel" in result.stdout
    assert "/nope/vmlinuz" in result.stdout
    assert "requirement(s) missing" in result.stdout


def test_env_prints_the_configuration_and_its_source(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[hypervisor.qemu]\ndefault_vcpus = 3\n")
    result = admin("env", config=config)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["hypervisor"]["default_vcpus"] == 3
    assert data["source"] == str(config)


def test_env_reports_a_bad_configuration(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[runtime]\ninternetworking_model = 'bridge'\n")
    result = admin("env", config=config)
    assert result.returncode == 1
    assert "internetworking_model" in result.stderr


def test_list_and_console_read_the_state_directory(tmp_path):
    state = tmp_path / "state" / "k8s.io" / "pod1"
    state.mkdir(parents=True)
    (state / "sandbox.json").write_text(
        json.dumps(
            {
                "namespace": "k8s.io",
                "sandbox_id": "pod1",
                "shim_pid": 42,
                "containers": {"pod1": {}, "app": {}},
            }
        )
    )
    (state / "qemu.pid").write_text("4242\n")
    (state / "console.log").write_text("guest says hello\n")
    env = {"PYKATA_STATE_ROOT": str(tmp_path / "state")}
    listed = admin("list", env=env)
    assert listed.returncode == 0
    row = listed.stdout.splitlines()[1].split()
    assert row == ["k8s.io", "pod1", "4242", "42", "pod1,app"]
    shown = admin("console", "pod1", env=env)
    assert shown.stdout == "guest says hello\n"
    missing = admin("console", "nope", env=env)
    assert missing.returncode == 1 and "no sandbox 'nope'" in missing.stderr

"""check's exit status and --json, env --json (no QEMU runs: it is a shell script here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def executable(path: Path, text: str = "#!/bin/sh\nexit 1\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def admin(tmp_path: Path, *args: str, config: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYKATA_STATE_ROOT": str(tmp_path / "state"),
    }
    return subprocess.run(
        [sys.executable, "-m", "shim.admin", "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def host_with_everything(tmp_path: Path) -> Path:
    qemu = executable(tmp_path / "qemu-system-x86_64")
    kernel = tmp_path / "vmlinuz"
    initrd = tmp_path / "initrd"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    executable(tmp_path / "bin" / "containerd")
    executable(tmp_path / "bin" / "containerd-shim-pykata-v2")
    config = tmp_path / "c.toml"
    config.write_text(
        f'[hypervisor.qemu]\npath = "{qemu}"\nkernel = "{kernel}"\ninitrd = "{initrd}"\n'
        'accel = "tcg"\nshared_fs = "none"\n'
        # the QEMU here is a shell script without seccomp: the floor is lowered for it
        "qemu_sandbox_required = false\n"
    )
    return config


def test_check_exits_0_when_every_requirement_is_there(tmp_path):
    result = admin(tmp_path, "check", config=host_with_everything(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[FAIL]" not in result.stdout
    assert result.stdout.rstrip().endswith("host can run pykata pods")


def test_check_json_reports_each_item_and_the_verdict(tmp_path):
    config = host_with_everything(tmp_path)
    (tmp_path / "initrd").unlink()
    result = admin(tmp_path, "check", "--json", config=config)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["guest initrd"]["status"] == "fail"
    assert by_name["QEMU"]["status"] == "ok"
    assert by_name["accelerator"]["status"] == "info"
    assert set(by_name["guest kernel"]) == {"name", "status", "detail"}


def test_check_exits_1_on_a_configuration_that_does_not_load(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[runtime]\ninternetworking_model = 'bridge'\n")
    result = admin(tmp_path, "check", config=config)
    assert result.returncode == 1
    assert result.stdout.startswith("[FAIL] configuration")
    result = admin(tmp_path, "check", "--json", config=config)
    assert result.returncode == 1
    assert json.loads(result.stdout)["checks"][0]["status"] == "fail"


def test_env_json(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[hypervisor.qemu]\ndefault_memory = 512\n")
    result = admin(tmp_path, "env", "--json", config=config)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["hypervisor"]["default_memory"] == 512


def test_usage_errors_exit_2(tmp_path):
    result = admin(tmp_path, "iptables", config=tmp_path / "none.toml")
    assert result.returncode == 2
    assert "{get,set}" in result.stderr


def test_check_and_env_name_the_kernel_from_the_builds_manifest(tmp_path):
    """The manifest.json beside the configured kernel says which kernel it is; a kernel
    the manifest does not name (or no manifest) is said to be undescribed."""
    from shim.admin.host import kernel_record, kernel_words

    (tmp_path / "vmlinuz-6.1.192-pykata").write_bytes(b"k")
    (tmp_path / "vmlinuz").symlink_to("vmlinuz-6.1.192-pykata")
    (tmp_path / "manifest.json").write_text(json.dumps({"kernel": {
        "file": "vmlinuz-6.1.192-pykata", "flavour": "pykata", "release": "6.1.192-pykata",
        "package": "linux-source-6.1"}}))
    assert kernel_record(str(tmp_path / "vmlinuz"))["flavour"] == "pykata"
    assert kernel_words(str(tmp_path / "vmlinuz")) == (
        "pykata's own, 6.1.192-pykata (linux-source-6.1)")
    # an older manifest has no flavour: it was Debian's cloud kernel
    (tmp_path / "manifest.json").write_text(json.dumps({"kernel": {
        "file": "vmlinuz-6.1.192-pykata", "release": "6.1.0-57-cloud-amd64",
        "package": "linux-image-6.1.0-57-cloud-amd64"}}))
    assert kernel_words(str(tmp_path / "vmlinuz")).startswith("Debian's cloud kernel, 6.1.0-57")
    (tmp_path / "other").write_bytes(b"k")
    assert kernel_record(str(tmp_path / "other")) is None
    assert "not described" in kernel_words(str(tmp_path / "nowhere" / "vmlinuz"))

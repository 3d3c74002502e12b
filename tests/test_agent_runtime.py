"""The OCI runtime driver's own parts: which runtime, and its sealed copy."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent import runtime


# -- which runtime ---------------------------------------------------------------------------
@pytest.fixture
def path_with(tmp_path, monkeypatch):
    """PATH holding only the fake executables named."""

    def make(*names: str) -> Path:
        folder = tmp_path / "bin"
        folder.mkdir(exist_ok=True)
        for name in names:
            exe = folder / name
            exe.write_text("#!/bin/sh\n")
            exe.chmod(0o755)
        monkeypatch.setenv("PATH", str(folder))
        return folder

    return make


def test_choose_prefers_crun_over_the_default_runc(path_with):
    folder = path_with("runc", "crun")
    assert runtime.choose("runc", {}) == f"{folder}/crun"
    assert runtime.choose("/usr/sbin/runc", {"PYKATA_OCI_RUNTIME": "auto"}) == f"{folder}/crun"


def test_choose_without_crun_keeps_runc(path_with):
    path_with("runc")
    assert runtime.choose("/usr/sbin/runc", {}) == "/usr/sbin/runc"


def test_choose_an_explicit_runtime_or_the_environment_wins(path_with):
    folder = path_with("runc", "crun")
    assert runtime.choose("/opt/youki", {}) == "/opt/youki"  # not named runc: a choice
    assert runtime.choose("runc", {"PYKATA_OCI_RUNTIME": "runc"}) == f"{folder}/runc"
    assert runtime.choose("runc", {"PYKATA_OCI_RUNTIME": "/opt/runc"}) == "/opt/runc"
    assert runtime.choose("/opt/crun", {"PYKATA_OCI_RUNTIME": " runc "}) == f"{folder}/runc"


# -- the sealed copy ---------------------------------------------------------------------------
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


@pytest.mark.parametrize("name", ["crun", "runc"])
def test_sealed_copy_runs_and_cannot_be_changed(tmp_path, name):
    binary = shutil.which(name)
    if binary is None:
        pytest.skip(f"needs {name}")
    copy = runtime.sealed_copy(binary, str(tmp_path / "bin"))
    assert copy is not None
    link, fd = copy
    try:
        assert link == str(tmp_path / "bin" / name)  # the processes keep their name
        assert os.readlink(link) == f"/proc/{os.getpid()}/fd/{fd}"
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) == SEALS  # what runc and crun check for
        assert os.fstat(fd).st_size == os.stat(binary).st_size
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
        with pytest.raises(PermissionError):
            os.truncate(link, 0)
        done = subprocess.run([link, "--version"], capture_output=True, text=True, check=True)
        assert f"{name} version" in done.stdout
    finally:
        os.close(fd)


def test_sealed_copy_of_a_missing_binary_is_none(tmp_path):
    assert runtime.sealed_copy(str(tmp_path / "nope"), str(tmp_path / "bin")) is None


def test_runtime_runs_its_sealed_copy_and_falls_back(tmp_path, monkeypatch):
    binary = shutil.which("runc") or shutil.which("crun")
    if binary is None:
        pytest.skip("needs runc or crun")
    monkeypatch.setenv("PYKATA_OCI_RUNTIME", binary)
    driver = runtime.OciRuntime(None, "runc", str(tmp_path / "state"))  # type: ignore[arg-type]
    assert driver.binary == binary
    assert driver.executable == str(tmp_path / "state.bin" / os.path.basename(binary))
    assert driver._argv("list")[:3] == [driver.executable, "--root", str(tmp_path / "state")]
    driver.close()
    assert driver.executable == binary
    assert not Path(tmp_path / "state.bin" / os.path.basename(binary)).exists()

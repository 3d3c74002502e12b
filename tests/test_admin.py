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


def console_state(tmp_path, monkeypatch, log: bytes) -> Path:
    """A sandbox pod1 whose console.log is `log`, under a state root of its own."""
    from shim import paths

    state = tmp_path / "state" / "k8s.io" / "pod1"
    state.mkdir(parents=True)
    (state / "sandbox.json").write_text("{}")
    (state / "console.log").write_bytes(log)
    monkeypatch.setattr(paths, "STATE_ROOT", tmp_path / "state")
    return state


HOSTILE = b"\x1b]0;owned\x07\x1b[2J"


def test_console_escapes_what_the_guest_wrote_and_reads_it_in_chunks(
    tmp_path, monkeypatch, capsysbinary
):
    """A hostile guest's escape sequences and a long line that never ends: shown escaped,
    and the log is read a bounded chunk at a time, never whole."""
    from shim.admin import run, sandboxes

    long_line = b"A" * (3 * sandboxes.CONSOLE_CHUNK + 5)  # no newline, ever
    console_state(tmp_path, monkeypatch, b"boot " + HOSTILE + b"\r\n" + long_line)
    reads: list[int | None] = []
    real_open = open

    class Recording:
        def __init__(self, f):
            self.f = f

        def read(self, size=None):
            reads.append(size)
            return self.f.read(size)

        def __getattr__(self, name):  # seek, fileno...
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(sandboxes, "open", lambda *a: Recording(real_open(*a)), raising=False)
    assert run(["console", "pod1"]) == 0
    out = capsysbinary.readouterr().out
    assert out == b"boot \\x1b]0;owned\\x07\\x1b[2J\r\n" + long_line
    assert reads and all(size is not None and 0 < size <= sandboxes.CONSOLE_CHUNK
                         for size in reads)


def test_console_raw_passes_the_bytes_through(tmp_path, monkeypatch, capsysbinary):
    from shim.admin import run

    console_state(tmp_path, monkeypatch, b"boot " + HOSTILE + b"\n")
    assert run(["console", "--raw", "pod1"]) == 0
    assert capsysbinary.readouterr().out == b"boot " + HOSTILE + b"\n"


def test_console_prints_the_logs_last_bytes_only(tmp_path, monkeypatch, capsysbinary):
    from shim.admin import run

    console_state(tmp_path, monkeypatch, b"old line\n" * 1000 + b"the end\n")
    assert run(["console", "--bytes", "12", "pod1"]) == 0
    assert capsysbinary.readouterr().out == b"ine\nthe end\n"
    assert run(["console", "pod1"]) == 0  # the default tail holds this whole small log
    assert capsysbinary.readouterr().out.startswith(b"old line\n")

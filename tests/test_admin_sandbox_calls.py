"""pykata-runtime metrics, iptables get|set, exec: against a real monitor-socket server."""

from __future__ import annotations

import io
import subprocess
import sys
import types
from pathlib import Path

import pytest
import test_admin_fakes as fakes

from shim.admin import run
from shim.admin.shim_client import ShimCallError, call

node = fakes.node  # fixtures
short_tmp = fakes.short_tmp

ROOT = Path(__file__).resolve().parent.parent


def test_metrics_prints_the_page_as_served(node, capsys):
    fake = node.serve("pod1")
    assert run(["metrics", "pod1"]) == 0
    assert capsys.readouterr().out == fake.page()


def test_iptables_get_v4_and_v6(node, capsys):
    fake = node.serve("pod1")
    fake.rules["/ip6tables"] = b"*filter\nCOMMIT"  # no final newline: the CLI adds one
    assert run(["iptables", "get", "pod1"]) == 0
    assert capsys.readouterr().out == fake.rules["/iptables"].decode()
    assert run(["iptables", "get", "--v6", "pod1"]) == 0
    assert capsys.readouterr().out == "*filter\nCOMMIT\n"


def test_iptables_set_from_a_file_and_from_stdin(node, short_tmp, monkeypatch):
    fake = node.serve("pod1")
    rules = short_tmp / "rules"
    rules.write_bytes(b"*filter\n-A INPUT -p tcp --dport 22 -j DROP\nCOMMIT\n")
    assert run(["iptables", "set", "pod1", str(rules)]) == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"*nat\nCOMMIT\n")))
    assert run(["iptables", "set", "--v6", "pod1", "-"]) == 0
    assert fake.puts == [
        ("/iptables", "application/octet-stream", rules.read_bytes()),
        ("/ip6tables", "application/octet-stream", b"*nat\nCOMMIT\n"),
    ]


def test_iptables_takes_katas_sandbox_id_flag(node, short_tmp, capsys):
    fake = node.serve("pod1")
    rules = short_tmp / "rules"
    rules.write_bytes(b"*filter\nCOMMIT\n")
    assert run(["iptables", "set", "--sandbox-id", "pod1", str(rules)]) == 0
    assert fake.puts[-1][2] == b"*filter\nCOMMIT\n"
    assert run(["iptables", "get", "--sandbox-id", "pod1"]) == 0
    assert capsys.readouterr().out == "*filter\nCOMMIT\n"


def test_iptables_set_needs_a_readable_file(node, short_tmp, capsys):
    node.serve("pod1")
    assert run(["iptables", "set", "pod1"]) == 1
    assert "iptables file not provided" in capsys.readouterr().err
    assert run(["iptables", "set", "pod1", str(short_tmp / "nope")]) == 1
    assert "cannot read iptables file" in capsys.readouterr().err


def test_errors_name_the_sandbox_and_the_cause(node, capsys):
    node.dead("gone")
    node.state_dir("nosock")
    assert run(["metrics", "nope"]) == 1
    assert "no sandbox 'nope'" in capsys.readouterr().err
    assert run(["metrics", "gone"]) == 1
    assert "nothing listens on" in capsys.readouterr().err
    assert run(["metrics", "nosock"]) == 1
    assert "no monitor socket at" in capsys.readouterr().err


def test_a_sandbox_id_in_two_namespaces_must_be_qualified(node, capsys):
    node.serve("pod1", "default")
    fake = node.serve("pod1", "k8s.io")
    assert run(["metrics", "pod1"]) == 1
    assert "several namespaces (default/pod1, k8s.io/pod1)" in capsys.readouterr().err
    assert run(["metrics", "k8s.io/pod1"]) == 0
    assert capsys.readouterr().out == fake.page()


def test_client_reports_status_and_body_of_an_error(node):
    node.serve("pod1")
    socket_path = node.root / "k8s.io" / "pod1" / "shim-monitor.sock"
    with pytest.raises(ShimCallError) as caught:
        call(socket_path, "GET", "/direct-volume/stats")
    assert caught.value.status == 400
    assert "Required parameter path not found" in str(caught.value)
    with pytest.raises(ShimCallError) as caught:
        call(socket_path, "DELETE", "/iptables")
    assert caught.value.status == 405


def test_exec_hands_the_state_dir_and_argv_to_the_debug_console(node, monkeypatch):
    state = node.state_dir("pod1")
    seen = []
    fake = types.ModuleType("shim.debug_console")
    fake.main_exec = lambda state_dir, argv, raw: seen.append((state_dir, argv, raw)) or 7
    monkeypatch.setitem(sys.modules, "shim.debug_console", fake)
    assert run(["exec", "pod1", "uname", "-r"]) == 7
    assert run(["exec", "pod1"]) == 7
    assert run(["exec", "--raw", "pod1", "vi", "--raw"]) == 7  # after SANDBOX: the command's
    assert seen == [
        (state, ["uname", "-r"], False),
        (state, [], False),
        (state, ["vi", "--raw"], True),
    ]


def test_exec_without_the_debug_console_module_says_so(node, monkeypatch, capsys):
    node.state_dir("pod1")
    monkeypatch.setitem(sys.modules, "shim.debug_console", None)  # import fails
    assert run(["exec", "pod1", "true"]) == 1
    assert "no debug console client" in capsys.readouterr().err


def test_exec_reaches_the_real_debug_console_module(node):
    pytest.importorskip(
        "shim.debug_console", reason="shim/debug_console.py (host side of exec) not written yet"
    )
    from shim.debug_console import main_exec

    assert callable(main_exec)


def test_metrics_through_the_entry_point(node):
    fake = node.serve("pod1")
    result = subprocess.run(
        [sys.executable, "-m", "shim.admin", "metrics", "pod1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=node.env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == fake.page()

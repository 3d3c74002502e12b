"""The agent's start-up path loads only what serving needs (each module costs a booted
VM's start under TCG): no argparse without flags, protobuf's pure-Python runtime
deferred, and both still there when used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.config import Config, _flags, parse

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_no_flags_gives_argparse_defaults() -> None:
    assert vars(_flags([])) == vars(_flags(["--run-dir", Config().run_dir]))


def test_flags_still_parse() -> None:
    config = parse(["--listen", "unix:///tmp/a.sock", "--cgroup-parent", "x/", "--no-poweroff"])
    assert (config.listen, config.cgroup_parent, config.poweroff) == (
        "unix:///tmp/a.sock", "/x", False)


def test_config_is_a_record() -> None:
    assert Config(listen="vsock://1024") == Config(listen="vsock://1024") != Config()
    assert "listen='vsock://1024'" in repr(Config(listen="vsock://1024"))
    try:
        Config(lisen="typo")
    except TypeError as exc:
        assert "lisen" in str(exc)
    else:
        raise AssertionError("a misspelt setting was accepted")


def test_parsing_no_flags_loads_no_argparse() -> None:
    out = _run("import sys\nfrom agent.config import parse\nparse([])\n"
               "print('argparse' in sys.modules)")
    assert out.split() == ["False"]


def test_protobuf_python_runtime_is_deferred_and_still_loads_on_use() -> None:
    out = _run(
        "import sys\n"
        "from agent.__main__ import defer_imports\n"
        "defer_imports()\n"
        "from protos.kata import agent_pb2\n"
        "import ttrpc.server\n"
        "req = agent_pb2.CreateContainerRequest(container_id='c1')\n"
        "back = agent_pb2.CreateContainerRequest.FromString(req.SerializeToString())\n"
        "print(back.container_id, 'google.protobuf.text_format' in sys.modules)\n"
        "from google.protobuf.internal import python_message\n"
        "print(callable(python_message._AttachFieldHelpers))\n"
    )
    assert out.split() == ["c1", "False", "True"]

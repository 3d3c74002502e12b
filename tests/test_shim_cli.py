"""The shim binary contract: flags, socket addresses, identifiers, the start and delete actions."""

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from protos.containerd.task.v2 import shim_pb2
from shim.cli import parse_args
from shim.paths import InvalidIdentifier, check_identifier, group_of, socket_address

ROOT = Path(__file__).resolve().parent.parent
SHIM = ROOT / "containerd-shim-pykata-v2"


def test_parse_containerd_16_start_command():
    args = parse_args(
        [
            "-namespace",
            "default",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "c1",
            "-debug",
            "start",
        ]
    )
    assert (args.namespace, args.id, args.action, args.debug) == ("default", "c1", "start", True)
    assert args.address == "/run/containerd/containerd.sock"
    assert args.publish_binary == "/usr/bin/containerd"


def test_parse_equals_double_dash_and_unknown_flags():
    args = parse_args(
        [
            "--namespace=k8s.io",
            "-id=c2",
            "-bundle",
            "/b",
            "-info",
            "-future-flag",
            "x",
            "-debug-socket",
            "/d.sock",
            "delete",
        ]
    )
    assert (args.namespace, args.id, args.bundle, args.action) == ("k8s.io", "c2", "/b", "delete")
    assert args.info is True
    assert args.debug_socket == "/d.sock"
    assert args.ignored == ("-future-flag", "x")


def test_unknown_flag_does_not_swallow_the_action():
    args = parse_args(["-namespace", "n", "-new-bool-flag", "start"])
    assert args.action == "start"


def test_socket_address_matches_containerd_derivation():
    digest = hashlib.sha256(b"/run/containerd/containerd.sock/default/pod1").hexdigest()
    assert socket_address("/run/containerd/containerd.sock", "default", "pod1") == (
        f"unix:///run/containerd/s/{digest}"
    )


@pytest.mark.parametrize("value", ["../x", "a/b", "", ".hidden", "a..b", "x" * 77, "a b", "é"])
def test_invalid_identifiers_are_refused(value):
    with pytest.raises(InvalidIdentifier):
        check_identifier("container id", value)


@pytest.mark.parametrize("value", ["c1", "my-container_1.2", "A" * 76, "k8s.io"])
def test_valid_identifiers(value):
    assert check_identifier("container id", value) == value


def test_group_comes_from_the_cri_sandbox_annotation():
    spec = {"annotations": {"io.kubernetes.cri.sandbox-id": "pod-abc"}}
    assert group_of(spec, "c1") == "pod-abc"
    assert group_of({}, "c1") == "c1"


def run_shim(*args, cwd, stdin=b"", env=None):
    return subprocess.run(
        [sys.executable, str(SHIM), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=30,
    )


def test_no_namespace_is_an_error(tmp_path):
    result = run_shim("-id", "x", "start", cwd=tmp_path)
    assert result.returncode == 1
    assert b"namespace cannot be empty" in result.stderr


def test_start_reuses_a_live_daemon_socket(tmp_path, monkeypatch):
    """A second container of the same group finds the running daemon's socket."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(
        json.dumps({"annotations": {"io.kubernetes.cri.sandbox-id": "pod-reuse-test"}})
    )
    address = socket_address(str(tmp_path / "c.sock"), "pykata-test", "pod-reuse-test")
    path = address.removeprefix("unix://")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    live = socket.socket(socket.AF_UNIX)
    live.bind(path)
    live.listen()
    try:
        result = run_shim(
            "-namespace",
            "pykata-test",
            "-address",
            str(tmp_path / "c.sock"),
            "-id",
            "c2",
            "start",
            cwd=bundle,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode() == address
        assert result.stderr == b""
        assert (bundle / "address").read_text() == address
    finally:
        live.close()
        os.unlink(path)


def test_start_without_config_json_fails_cleanly(tmp_path):
    result = run_shim("-namespace", "n", "-id", "c1", "-address", "/x", "start", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"config.json" in result.stderr


def test_delete_of_unknown_container_prints_a_delete_response(tmp_path):
    env = {"PYKATA_STATE_ROOT": str(tmp_path / "state")}
    result = run_shim(
        "-namespace", "n", "-id", "gone", "-bundle", str(tmp_path), "delete", cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    response = shim_pb2.DeleteResponse.FromString(result.stdout)
    assert response.exit_status == 137
    assert response.exited_at.seconds > 0


def test_delete_refuses_path_characters(tmp_path):
    result = run_shim("-namespace", "n", "-id", "../../etc", "delete", cwd=tmp_path)
    assert result.returncode == 1
    assert b"invalid" in result.stderr


def test_start_and_delete_import_nothing_heavy():
    code = (
        "import sys; sys.argv = ['x']; import shim.cli, shim.start, shim.delete, shim.paths; "
        "heavy = [m for m in ('asyncio', 'google.protobuf', 'structlog', 'pyroute2', "
        "'qemu', 'ttrpc.client', 'subprocess', 'shutil', 'dataclasses', 'typing') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("pid", [0, 1, 4242, 2**31])
def test_hand_encoded_delete_response_matches_protobuf(pid):
    from google.protobuf.timestamp_pb2 import Timestamp

    from shim.delete import _delete_response

    now_ns = 1_764_000_000_123_456_789
    stamp = Timestamp()
    stamp.FromNanoseconds(now_ns)
    expected = shim_pb2.DeleteResponse(pid=pid, exit_status=137, exited_at=stamp)
    assert _delete_response(pid, 137, now_ns) == expected.SerializeToString()


def test_info_prints_a_runtime_info_with_the_features_document(tmp_path):
    """containerd 2.x: `-info` alone, options (an Any) on stdin, RuntimeInfo on stdout."""
    from google.protobuf.any_pb2 import Any

    from protos.containerd.types import introspection_pb2

    options = Any(type_url="runtimeoptions.v1.Options", value=b"\x12\x05/x.tm")
    for stdin in (b"", options.SerializeToString()):
        result = run_shim("-info", cwd=tmp_path, stdin=stdin)
        assert result.returncode == 0, result.stderr
        assert result.stderr == b""
        info = introspection_pb2.RuntimeInfo.FromString(result.stdout)
        assert info.name == "io.containerd.pykata.v2"
        assert info.version.version == "0.1.0"
        assert info.HasField("options") == bool(stdin)
        if stdin:
            assert info.options == options
        assert info.features.type_url == (
            "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
        )
        features = json.loads(info.features.value)
        assert features["ociVersionMin"] == "1.0.0"
        assert features["ociVersionMax"].startswith("1.2.")
        assert features["linux"]["mountExtensions"]["idmap"]["enabled"] is False
        assert "rro" not in features["mountOptions"]
        assert info.annotations["io.containerd.pykata.v2.version"] == "0.1.0"


def test_delete_takes_the_flags_of_newer_containerds(tmp_path):
    """1.7+ passes -debug to delete; unknown flags never make it fail."""
    env = {"PYKATA_STATE_ROOT": str(tmp_path / "state")}
    result = run_shim(
        "-namespace", "n", "-address", "/run/c.sock", "-publish-binary", "/usr/bin/containerd",
        "-id", "gone", "-bundle", str(tmp_path), "-debug", "-future-flag", "v",
        "-another-bool", "delete", cwd=tmp_path,
        env={**env, "GRPC_ADDRESS": "/run/c.sock", "NAMESPACE": "n", "MAX_SHIM_VERSION": "2"},
    )
    assert result.returncode == 0, result.stderr
    assert shim_pb2.DeleteResponse.FromString(result.stdout).exit_status == 137


def test_delete_removes_the_socket_of_a_dead_daemon_only(tmp_path):
    """containerd runs delete when the daemon is gone: its socket file must not stay behind."""
    from shim.delete import remove_dead_socket
    from shim.paths import SHIM_SOCKET_DIR

    os.makedirs(SHIM_SOCKET_DIR, exist_ok=True)
    dead = os.path.join(SHIM_SOCKET_DIR, f"pykata-test-dead-{os.getpid()}")
    live = os.path.join(SHIM_SOCKET_DIR, f"pykata-test-live-{os.getpid()}")
    outside = tmp_path / "elsewhere.sock"
    sockets = []
    try:
        for path in (dead, live, str(outside)):
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(path)
            sockets.append(sock)
        sockets[1].listen()
        sockets[0].close()  # the file stays, nobody listens: a killed daemon's socket
        sockets[2].close()
        for index, (path, kept) in enumerate(((dead, False), (live, True), (str(outside), True))):
            bundle = tmp_path / f"bundle-{index}"
            bundle.mkdir()
            (bundle / "address").write_text(f"unix://{path}")
            remove_dead_socket(str(bundle))
            assert os.path.exists(path) == kept, path
        remove_dead_socket(str(tmp_path / "no-such-bundle"))  # no address file: nothing to do
    finally:
        for sock in sockets:
            sock.close()
        for path in (dead, live):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

"""What differs between containerd 1.6, 1.7 and 2.x, seen from a pykata pod.

The shared end-to-end cases run under every line (test_shim_ctr, test_cri);
this file checks the differences themselves: the spec version each line
writes reaches a guest that runs it, and 2.x's `-info` introspection.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import time
import uuid

import pytest

from integration.containerd_versions import CONTAINERD_LINES
from integration.pykata_env import (
    RUNTIME,
    assert_nothing_left,
    ensure_guest_assets,
    ensure_shim_on_path,
)

pytestmark = pytest.mark.integration
# the runtime-spec version each line writes into config.json
SPEC_VERSIONS = {"1.6": r"^1\.0\.2", "1.7": r"^1\.[12]\.", "2": r"^1\.2\."}


@pytest.fixture(autouse=True)
def assets_and_no_leftovers():
    ensure_shim_on_path()
    ensure_guest_assets()
    yield
    assert_nothing_left()


@pytest.mark.parametrize("line", CONTAINERD_LINES, ids=lambda line: f"containerd-{line}")
def test_the_spec_version_each_line_writes_runs_in_the_guest(containerd_of_line, line):
    cd, image = containerd_of_line(line)
    cid = f"ver-{line.replace('.', '')}-{uuid.uuid4().hex[:6]}"
    run = subprocess.Popen(
        cd.ctr_argv("run", "--runtime", RUNTIME, "--rm", image, cid, "sh", "-c",
                    "uname -r; read line; exit 5"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        bundle = cd.state / "io.containerd.runtime.v2.task" / cd.namespace / cid
        deadline = time.monotonic() + 120
        while not (bundle / "config.json").exists() and time.monotonic() < deadline:
            assert run.poll() is None, run.stderr.read()
            time.sleep(0.1)
        version = json.loads((bundle / "config.json").read_text())["ociVersion"]
        assert re.match(SPEC_VERSIONS[line], version), version
        out, err = run.communicate("go\n", timeout=240)
    finally:
        if run.poll() is None:
            cd.ctr("task", "kill", "-s", "KILL", cid)
            run.wait(timeout=60)
    assert run.returncode == 5, (err, cd.log_tail())
    kernel = out.strip()
    assert kernel.startswith("6.1.") and kernel != platform.release(), kernel


def test_containerd_2_introspects_the_runtime_with_info(containerd_of_line):
    cd, _ = containerd_of_line("2")
    result = cd.ctr("plugins", "inspect-runtime", "--runtime", RUNTIME)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["Name"] == RUNTIME
    assert info["Version"]["Version"]
    features = info["Features"]
    assert features["ociVersionMin"] == "1.0.0"
    assert features["ociVersionMax"].startswith("1.2.")
    assert "rro" not in features["mountOptions"]
    assert features["linux"]["mountExtensions"]["idmap"]["enabled"] is False
    log = cd.log_path.read_text(errors="replace")
    for complaint in ("failed to load runtime info", "failed to introspect"):
        assert complaint not in log, [line for line in log.splitlines() if complaint in line]

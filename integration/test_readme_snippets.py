"""The README's containerd snippets, pasted as they are into a fresh config (1.x: a
`version = 2` file; 2.x: its own `version = 3` format) after `make setup`, run a pod.
The README once named /etc/pykata/configuration.toml, which nothing installs: every
RunPodSandbox failed."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from integration.cri_env import CriClient, CriNode, busybox_container, pod_sandbox_config
from integration.pykata_env import ensure_guest_assets, ensure_shim_on_path
from integration.test_cri import assert_pod_gone, exec_sync

README = Path(__file__).resolve().parent.parent / "README.md"


def runtime_snippets() -> list[str]:
    """The README's TOML blocks that register the pykata runtime."""
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    return [block for block in blocks if "runtimes.pykata]" in block]


def test_the_readme_has_one_snippet_per_config_format():
    found = runtime_snippets()
    assert len(found) == 2, found
    assert sum("io.containerd.cri.v1.runtime" in block for block in found) == 1
    for block in found:  # pasted into a file that has its own `version = N` line
        assert not re.search(r"^version\s*=", block, flags=re.M), block


@pytest.mark.parametrize(("line", "version"), [("1.7", 2), ("2", 3)],
                         ids=["containerd-1.7", "containerd-2"])
def test_the_readmes_snippet_runs_a_pod_as_pasted(line, version):
    ensure_shim_on_path()
    ensure_guest_assets()
    [snippet] = [block for block in runtime_snippets()
                 if ("io.containerd.cri.v1.runtime" in block) == (version == 3)]
    named = re.search(r'ConfigPath = "([^"]+)"', snippet)
    if named:
        assert os.path.isfile(named.group(1)), f"make setup installs no {named.group(1)}"
    with CriNode(line=line, config_version=version, runtime_toml=snippet) as node, \
            CriClient(node.address) as cri:
        api = cri.api
        pod_config = pod_sandbox_config(api, node, "readme")
        pod_id = cri.run_pod(pod_config)
        try:
            cid = cri.start_container(pod_id, pod_config, busybox_container(api, "app"))
            code, out, err = exec_sync(cri, cid, "uname", "-r")
            assert code == 0, err
            assert out.strip() != os.uname().release, "the container ran on the host"
        finally:
            cri.remove_pod(pod_id)
        assert_pod_gone(node, pod_id)

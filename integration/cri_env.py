"""A Kubernetes node in a box: a private containerd with the CRI plugin, run inside a
test-made "node" network namespace, with a CNI bridge network and a local pause image;
and a CRI v1 client (PyPI `container-runtime-interface-api`) to drive it as a kubelet.

Rules (HOST-FACTS.md): the CNI bridge lives in the node netns only (containerd runs
there through `nsenter --net=`, not `ip netns exec`, which would hide /sys/fs/cgroup),
addresses from 198.18.0.0/15, no route out, pod netns under containerd's own state
dir (`netns_mounts_under_state_dir`), everything removed by stop().
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from integration.containerd_env import (
    BUSYBOX_BINARY,
    BUSYBOX_IMAGE,
    PrivateContainerd,
    _digest,
    _gzip,
    _rootfs_layer,
    _tar_add,
    _toml_str,
    default_cache_dir,
    import_busybox,
)

CRI_NAMESPACE = "k8s.io"
PAUSE_IMAGE = "docker.io/pykata/pause:test"
CNI_BIN_DIR = "/usr/lib/cni"
NETNS_DIR = "/var/run/netns"
POD_SUBNET = "198.18.4.0/24"
BRIDGE = "pkcri0"
RUNTIME_HANDLER = "pykata"
# the pause container: blocks until TERM
PAUSE_CMD = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


def build_pause_image(out_dir: Path | None = None) -> Path:
    """An OCI tarball of the busybox rootfs whose default command blocks forever (cached)."""
    import hashlib
    import io
    import tarfile

    out = out_dir or default_cache_dir()
    h = hashlib.sha256(b"pause-1\0" + json.dumps(PAUSE_CMD).encode())
    h.update(BUSYBOX_BINARY.read_bytes())
    path = out / f"pause-oci-{h.hexdigest()[:16]}.tar"
    if path.exists():
        return path
    layer = _rootfs_layer(BUSYBOX_BINARY)
    layer_gz = _gzip(layer)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "Cmd": PAUSE_CMD, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(layer_gz), "size": len(layer_gz)}],
    }, sort_keys=True).encode()
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": _digest(manifest), "size": len(manifest),
                       "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"io.containerd.image.name": PAUSE_IMAGE,
                                       "org.opencontainers.image.ref.name": "test"}}],
    }, sort_keys=True).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _tar_add(tar, "blobs")
        _tar_add(tar, "blobs/sha256")
        for blob in (layer_gz, config, manifest):
            _tar_add(tar, "blobs/sha256/" + _digest(blob).split(":", 1)[1],
                     kind=tarfile.REGTYPE, mode=0o644, data=blob)
        _tar_add(tar, "oci-layout", kind=tarfile.REGTYPE, mode=0o644,
                 data=b'{"imageLayoutVersion":"1.0.0"}')
        _tar_add(tar, "index.json", kind=tarfile.REGTYPE, mode=0o644, data=index)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def _cni_conflist(data_dir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "0.4.0",
        "name": "pykata-cri-test",
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": False,
            "ipam": {
                "type": "host-local",
                "dataDir": str(data_dir),
                "ranges": [[{"subnet": POD_SUBNET}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }],
    }


def pod_sandbox_config(api: Any, node: CriNode, name: str, **fields: Any) -> Any:
    """A PodSandboxConfig as kubelet makes one (metadata, log directory), with `fields`."""
    fields.setdefault("linux", api.LinuxPodSandboxConfig())
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace="default", uid=f"uid-{node.tag}",
                                        attempt=0),
        log_directory=str(node.dir / "logs"),
        **fields,
    )


def busybox_container(api: Any, name: str, **fields: Any) -> Any:
    """A ContainerConfig of the busybox image (`sleep 600` unless `command` is given)."""
    fields.setdefault("command", ["sleep", "600"])
    fields.setdefault("log_path", f"{name}.log")
    fields.setdefault("linux", api.LinuxContainerConfig())
    return api.ContainerConfig(metadata=api.ContainerMetadata(name=name, attempt=0),
                               image=api.ImageSpec(image=BUSYBOX_IMAGE), **fields)


class CriNode:
    """The node netns + a CRI-enabled private containerd inside it + images."""

    def __init__(
        self,
        *,
        restrict_oom_score_adj: bool = True,
        line: str = "1.6",
        sandboxer: str = "",
        runtime_options: dict[str, str] | None = None,
        runtime_toml: str = "",
        config_version: int = 2,
    ) -> None:
        """restrict_oom_score_adj=False: CRI asks the guest for negative scores (-998 for
        the pause container), which runc on this host could not apply. ``line``: the
        containerd to run ("1.6", "1.7", "2"; 2.x migrates this version 2 config).
        ``sandboxer``: 2.x's per-runtime choice, "podsandbox" (a pause container, the
        default) or "shim" (the pod through the shim's Sandbox API). ``runtime_options``:
        the pykata runtime's options table (e.g. ConfigPath). ``runtime_toml``: the
        pykata runtime's tables as given (the README's snippets), instead of ours.
        ``config_version``: 3 writes containerd 2.x's own format (2.x migrates 2)."""
        self.runtime_options = dict(runtime_options or {})
        self.runtime_toml = runtime_toml
        self.config_version = config_version
        self.restrict_oom_score_adj = restrict_oom_score_adj
        self.line = line
        self.sandboxer = sandboxer
        self.tag = uuid.uuid4().hex[:6]
        self.netns = f"pkcri-{self.tag}"
        self.netns_path = os.path.join(NETNS_DIR, self.netns)
        self.dir = Path(tempfile.mkdtemp(prefix="pkcri-", dir="/tmp"))
        self.cni_conf = self.dir / "net.d"
        self.cni_data = self.dir / "ipam"
        self.containerd: PrivateContainerd | None = None
        self.images: dict[str, str] = {}
        self._netns_made = False

    def pykata_toml(self, runtimes: str) -> list[str]:
        """The pykata runtime's tables under `runtimes` (a table name less its "]")."""
        if self.runtime_toml:
            return [self.runtime_toml.strip()]
        return [
            f"{runtimes}.{RUNTIME_HANDLER}]",
            '  runtime_type = "io.containerd.pykata.v2"',
            *([f"  sandboxer = {_toml_str(self.sandboxer)}"] if self.sandboxer else []),
            *([f"{runtimes}.{RUNTIME_HANDLER}.options]"] if self.runtime_options else []),
            *[f"  {key} = {_toml_str(value)}" for key, value in self.runtime_options.items()],
        ]

    def extra_toml(self) -> str:
        if self.config_version == 3:
            return self.extra_toml_v3()
        cri = '[plugins."io.containerd.grpc.v1.cri"]'
        runtimes = '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes'
        return "\n".join([
            cri,
            f"  sandbox_image = {_toml_str(PAUSE_IMAGE)}",
            f"  restrict_oom_score_adj = {str(self.restrict_oom_score_adj).lower()}",
            "  netns_mounts_under_state_dir = true",
            "  disable_apparmor = true",
            "  enable_selinux = false",
            f'{cri[:-1]}.containerd]',
            '  default_runtime_name = "runc"',
            '  snapshotter = "overlayfs"',
            f"{runtimes}.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"{runtimes}.runc.options]",
            f"  Root = {_toml_str(str(self.dir / 'runc'))}",
            f'{cri[:-1]}.cni]',
            f"  bin_dir = {_toml_str(CNI_BIN_DIR)}",
            f"  conf_dir = {_toml_str(str(self.cni_conf))}",
            "  max_conf_num = 1",
            *self.pykata_toml(runtimes),
            "",
        ])

    def extra_toml_v3(self) -> str:
        """The same node in containerd 2.x's `version = 3` names."""
        images = '[plugins."io.containerd.cri.v1.images"]'
        cri = '[plugins."io.containerd.cri.v1.runtime"]'
        runtimes = '[plugins."io.containerd.cri.v1.runtime".containerd.runtimes'
        return "\n".join([
            images,
            '  snapshotter = "overlayfs"',
            f'{images[:-1]}.pinned_images]',
            f"  sandbox = {_toml_str(PAUSE_IMAGE)}",
            cri,
            f"  restrict_oom_score_adj = {str(self.restrict_oom_score_adj).lower()}",
            "  netns_mounts_under_state_dir = true",
            "  disable_apparmor = true",
            "  enable_selinux = false",
            f'{cri[:-1]}.containerd]',
            '  default_runtime_name = "runc"',
            f"{runtimes}.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"{runtimes}.runc.options]",
            f"  Root = {_toml_str(str(self.dir / 'runc'))}",
            f'{cri[:-1]}.cni]',
            f"  bin_dirs = [{_toml_str(CNI_BIN_DIR)}]",
            f"  conf_dir = {_toml_str(str(self.cni_conf))}",
            "  max_conf_num = 1",
            *self.pykata_toml(runtimes),
            "",
        ])

    def start(self) -> CriNode:
        try:
            subprocess.run(["ip", "netns", "add", self.netns], check=True, timeout=10,
                           capture_output=True)
            self._netns_made = True
            subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True,
                           timeout=10)
            self.cni_conf.mkdir()
            self.cni_data.mkdir()
            (self.cni_conf / "10-pykata.conflist").write_text(
                json.dumps(_cni_conflist(self.cni_data), indent=1))
            from integration.containerd_versions import containerd_for

            binaries = containerd_for(self.line)
            self.containerd = PrivateContainerd(
                containerd_bin=binaries.containerd,
                ctr_bin=binaries.ctr,
                enable_cri=True,
                extra_toml=self.extra_toml(),
                config_version=self.config_version,
                wrapper=["nsenter", f"--net={self.netns_path}", "--"],
                namespace=CRI_NAMESPACE,
                log_level="debug",
            ).start()
            import_busybox(self.containerd)
            self._import(build_pause_image(), PAUSE_IMAGE)
        except BaseException:
            self.stop()
            raise
        return self

    def _import(self, tarball: Path, name: str) -> None:
        assert self.containerd is not None
        res = self.containerd.ctr("images", "import", str(tarball), timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"ctr images import {name}: {res.stderr or res.stdout}")

    @property
    def address(self) -> str:
        assert self.containerd is not None
        return self.containerd.address

    def in_node(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", f"--net={self.netns_path}", "--", *argv],
                              capture_output=True, text=True, timeout=timeout)

    def pod_netns_files(self) -> list[str]:
        """Pod netns files CRI made (under containerd's state dir)."""
        if self.containerd is None:
            return []
        found = []
        for root, _dirs, files in os.walk(self.containerd.state):
            if os.path.basename(root) == "netns":
                found += [os.path.join(root, f) for f in files]
        return found

    def stop(self) -> None:
        if self.containerd is not None:
            with contextlib.suppress(Exception):
                self._remove_pods()
            self.containerd.stop()
        if self._netns_made:
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=10)
            self._netns_made = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def _remove_pods(self) -> None:
        """Best effort: stop and remove every pod through CRI (runs the CNI DEL)."""
        with CriClient(self.address) as cri:
            for pod in cri.runtime.ListPodSandbox(cri.api.ListPodSandboxRequest(),
                                                  timeout=30).items:
                with contextlib.suppress(Exception):
                    cri.runtime.StopPodSandbox(
                        cri.api.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=180)
                with contextlib.suppress(Exception):
                    cri.runtime.RemovePodSandbox(
                        cri.api.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=180)

    def __enter__(self) -> CriNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CriClient:
    """RuntimeService and ImageService stubs over containerd's CRI socket."""

    def __init__(self, address: str) -> None:
        import grpc
        from cri_api.v1 import api_pb2, api_pb2_grpc

        self.api = api_pb2
        self.channel = grpc.insecure_channel(f"unix://{address}")
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.image = api_pb2_grpc.ImageServiceStub(self.channel)

    # -- what a kubelet does over and over ------------------------------------------
    def run_pod(self, pod_config: Any, timeout: float = 300) -> str:
        """RunPodSandbox with the pykata handler; the pod sandbox id."""
        request = self.api.RunPodSandboxRequest(config=pod_config, runtime_handler=RUNTIME_HANDLER)
        return self.runtime.RunPodSandbox(request, timeout=timeout).pod_sandbox_id

    def start_container(
        self, pod_id: str, pod_config: Any, config: Any, timeout: float = 300
    ) -> str:
        """CreateContainer + StartContainer in a pod; the container id."""
        request = self.api.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config
        )
        cid = self.runtime.CreateContainer(request, timeout=timeout).container_id
        self.runtime.StartContainer(self.api.StartContainerRequest(container_id=cid),
                                    timeout=timeout)
        return cid

    def wait_exited(self, cid: str, timeout: float = 60) -> Any:
        """The container's status once it has exited (or its last status at `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.runtime.ContainerStatus(
                self.api.ContainerStatusRequest(container_id=cid), timeout=30).status
            if status.state == self.api.CONTAINER_EXITED or time.monotonic() >= deadline:
                return status
            time.sleep(0.5)

    def remove_pod(self, pod_id: str, timeout: float = 300) -> None:
        """StopPodSandbox + RemovePodSandbox."""
        self.runtime.StopPodSandbox(self.api.StopPodSandboxRequest(pod_sandbox_id=pod_id),
                                    timeout=timeout)
        self.runtime.RemovePodSandbox(self.api.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
                                      timeout=timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""An idle pod booted for a measurement: the VM the shim would start, with nothing in it.

The pod is a shim.sandbox.Sandbox (state dir, shared dir, QEMU and virtiofsd, the
agent's CreateSandbox) in a namespace of its own, without a network, held by this
process the way the shim daemon holds a pod. So this process stands in for the
shim in the measurement: it has loaded the same sandbox, vmm and agent-client
code, though not the Task API service.

integration/containerd_env.py's private containerd is test harness code (not
installed with pykata, and it starts a containerd of its own): not for a CLI.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from shim.admin.errors import AdminError
from shim.config import Config

NAMESPACE = "pykata-overhead"


def pod_pids(sandbox: Any) -> dict[str, list[int]]:
    """shim / qemu / virtiofsd / vhost-vsock pids of a started Sandbox held by this process."""
    from shim.vmm import procs

    pids = {"shim": [os.getpid()], "qemu": [sandbox.vm.pid]}
    virtiofsd = sandbox.vm.virtiofsd
    if virtiofsd is not None:
        # with --sandbox=namespace the process we started forks the one that serves
        pids["virtiofsd"] = [virtiofsd.pid, *procs.children(virtiofsd.pid)]
    if sandbox.vm.vhost_vsock is not None:  # hybrid vsock's daemon
        pids["vhost-vsock"] = [sandbox.vm.vhost_vsock.pid]
    return pids


@contextlib.asynccontextmanager
async def idle_pod(config: Config) -> AsyncIterator[dict[str, list[int]]]:
    """Boot an idle pod with `config`'s sizes, yield its pids, then tear it all down."""
    from shim.sandbox.sandbox import Sandbox

    sandbox = Sandbox(NAMESPACE, f"overhead-{os.getpid()}-{int(time.time())}", config)
    try:
        await sandbox.start(netns=None, hostname="pykata-overhead")
    except Exception as exc:
        await sandbox.stop()  # start undoes its own work; stop is idempotent
        raise AdminError(f"the idle pod did not start: {exc}") from exc
    try:
        yield pod_pids(sandbox)
    finally:
        await sandbox.stop()

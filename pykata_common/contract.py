"""What the shim and the agent agree on outside the agent protocol.

The shim builds the VM (ports, kernel parameters, the virtiofs export) and the
agent finds them inside it: each fact is written here once for both sides.
Names and values are Kata's where Kata has them.
"""

from __future__ import annotations

#: The agent's ttrpc port on vsock.
AGENT_VSOCK_PORT = 1024
#: What the agent prints on the guest console once it listens on vsock, whatever its log
#: level: over hybrid vsock the shim dials only after it (shim.vmm.vm._wait_listening).
VSOCK_LISTENING_NOTICE = "listening on vsock://"
#: The virtio-serial port the agent listens on when the VM has no vsock.
AGENT_PORT_NAME = "agent.channel.0"
#: The virtio-serial port the shim adds for the debug console; the agent serves a shell on it.
DEBUG_CONSOLE_PORT_NAME = "pykata.console.0"
#: Kata's kernel parameter that turns the debug console on.
DEBUG_CONSOLE_PARAM = "agent.debug_console"
#: Set by the shim only on the VM a template is made from: its clones then start with
#: the first container's imports done and the runtime's sealed copy made.
PREWARM_PARAM = "agent.prewarm"

#: The guest's run directory: container bundles, the shared directory.
KATA_RUN_DIR = "/run/kata-containers"
#: The virtiofs tag of the sandbox's shared folder (virtiofsd's export).
SHARED_FS_TAG = "kataShared"
#: Where the agent mounts that share (under its run directory): <dir>/<container id>/rootfs
#: and the volumes.
SHARED_SUBDIR = "shared/containers"
GUEST_SHARED_DIR = f"{KATA_RUN_DIR}/{SHARED_SUBDIR}"

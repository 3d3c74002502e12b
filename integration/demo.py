#!/usr/bin/env python3
"""`make demo`: a private containerd runs a busybox container inside a pykata VM.

Starts containerd with its own root/state/sockets under /tmp, imports a busybox
image built locally (nothing can be pulled), then runs
`ctr run --runtime io.containerd.pykata.v2 --rm <image> demo uname -a`
and shows that the kernel answering is the guest's, not the host's.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from integration.containerd_env import PrivateContainerd, import_busybox  # noqa: E402
from integration.pykata_env import RUNTIME, ensure_guest_assets, ensure_shim_on_path  # noqa: E402


def main() -> int:
    ensure_shim_on_path()
    ensure_guest_assets()
    with PrivateContainerd() as containerd:
        image = import_busybox(containerd)
        command = ["run", "--runtime", RUNTIME, "--rm", image, "demo", "uname", "-a"]
        print(f"$ ctr {' '.join(command)}", flush=True)
        started = time.monotonic()
        result = containerd.ctr(*command, timeout=300)
        elapsed = time.monotonic() - started
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        if result.returncode != 0:
            print(f"demo failed (exit {result.returncode}); containerd log tail:", file=sys.stderr)
            print(containerd.log_tail(), file=sys.stderr)
            return 1
    print(f"\nhost kernel:  {platform.release()}")
    print(f"guest kernel: {result.stdout.split()[2]}  (the container ran inside a QEMU VM)")
    print(f"ctr run took {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

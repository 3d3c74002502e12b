"""Build `unixsock` (a static Go binary, stdlib only, offline), cached by source hash."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from integration.containerd_env import default_cache_dir

SOURCE = Path(__file__).resolve().parent / "main.go"


def build_unixsock() -> Path:
    """The built binary's path (golang-go must be installed: `make host-packages`)."""
    go = shutil.which("go")
    if go is None:
        raise FileNotFoundError("go not found: apt-get install golang-go")
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True)
    digest = hashlib.sha256(SOURCE.read_bytes() + version.stdout.encode()).hexdigest()[:16]
    out = default_cache_dir() / "unixsock"
    out.mkdir(parents=True, exist_ok=True)
    binary = out / f"unixsock-{digest}"
    if binary.exists():
        return binary
    env = dict(os.environ, GO111MODULE="off", GOPROXY="off", GOFLAGS="", CGO_ENABLED="0",
               GOCACHE=str(out / "gocache"), GOPATH=str(out / "gopath"))
    partial = out / f".unixsock-{os.getpid()}"
    result = subprocess.run([go, "build", "-trimpath", "-o", str(partial), str(SOURCE)],
                            env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"go build of {SOURCE} failed:\n{result.stdout}{result.stderr}")
    partial.rename(binary)
    return binary

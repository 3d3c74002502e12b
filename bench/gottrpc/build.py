"""Build the Go ttrpc peer (``gottrpc``) offline, cached by source hash.

Uses Debian's packaged Go sources (golang-go, golang-github-containerd-ttrpc-dev,
golang-github-gogo-protobuf-dev) in GOPATH mode; no module proxy, no network.

    python3 bench/gottrpc/build.py [OUT_DIR]     # prints the binary's path
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
GOPATH = "/usr/share/gocode"
TTRPC_SRC = Path(GOPATH, "src/github.com/containerd/ttrpc")


def default_out_dir() -> Path:
    """$PYKATA_CACHE_DIR/gottrpc, or ~/.cache/pykata/gottrpc."""
    env = os.environ.get("PYKATA_CACHE_DIR")
    return (Path(env) if env else Path.home() / ".cache" / "pykata") / "gottrpc"


def go_env(cache_dir: Path) -> dict[str, str]:
    """The environment for an offline GOPATH-mode build."""
    env = dict(os.environ)
    env.update(
        GO111MODULE="off",
        GOPATH=GOPATH,
        GOPROXY="off",
        GOFLAGS="",
        GOCACHE=str(cache_dir),
        CGO_ENABLED="0",
    )
    return env


def source_hash() -> str:
    """Hash of our Go sources, the ttrpc library sources and the Go version."""
    h = hashlib.sha256()
    for f in sorted(SOURCE_DIR.glob("*.go")):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    for f in sorted(TTRPC_SRC.glob("*.go")):
        h.update(f.name.encode() + b"\0" + str(f.stat().st_size).encode() + b"\0")
    go = shutil.which("go")
    if go is None:
        raise FileNotFoundError("go not found: apt-get install golang-go")
    h.update(subprocess.run([go, "version"], capture_output=True, text=True,
                            check=True).stdout.encode())
    return h.hexdigest()[:16]


def build_gottrpc(out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of a built ``gottrpc`` binary, building it if needed."""
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    out.mkdir(parents=True, exist_ok=True)
    binary = out / f"gottrpc-{source_hash()}"
    if binary.exists():
        return binary
    if not TTRPC_SRC.is_dir():
        raise FileNotFoundError(
            f"{TTRPC_SRC} missing: apt-get install golang-github-containerd-ttrpc-dev"
        )
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".gottrpc-")
    os.close(fd)
    try:
        res = subprocess.run(
            ["go", "build", "-trimpath", "-o", tmp, "."],
            cwd=SOURCE_DIR, env=go_env(out / "gocache"),
            capture_output=True, text=True, timeout=600, check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"go build failed:\n{res.stdout}{res.stderr}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, binary)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return binary


if __name__ == "__main__":
    print(build_gottrpc(sys.argv[1] if len(sys.argv) > 1 else None))

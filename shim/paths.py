"""Names and places: shim socket addresses, state directories, identifier rules.

Imported by the `start` and `delete` actions: standard library only, nothing heavy.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

# containerd's own shims put their sockets here (defaults.DefaultStateDir + "/s").
SHIM_SOCKET_DIR = "/run/containerd/s"
STATE_ROOT = Path(os.environ.get("PYKATA_STATE_ROOT", "/run/pykata"))
# In each sandbox's state dir: its record (shim.sandbox.record) and QEMU's pid file.
SANDBOX_FILE = "sandbox.json"
QEMU_PID_FILE = "qemu.pid"
CGROUP_FILE = "cgroup.json"  # the pod's cgroup (shim.sandbox.cgroup), removed by teardown
# Directly assigned volumes: <root>/<base64url(volume path)>/mountInfo.json, as Kata lays them
# out under /run/kata-containers/shared/direct-volumes (not a containerd namespace: it has
# no sandbox.json children).
DIRECT_VOLUMES_ROOT = STATE_ROOT / "direct-volumes"
MONITOR_SOCKET = "shim-monitor.sock"  # Kata's per-sandbox management socket

# Annotations that put several containers in one sandbox (= one shim, one VM).
GROUP_ANNOTATIONS = ("io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id")
CONTAINER_TYPE_ANNOTATION = "io.kubernetes.cri.container-type"
SPEC_FILE = "config.json"  # a bundle's OCI spec

# containerd's identifier rule: alphanumerics, separated by single . _ or -.
_IDENTIFIER = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
MAX_IDENTIFIER = 76


class InvalidIdentifier(ValueError):
    """An id or namespace that could escape its directory or is not containerd's form."""


def check_identifier(kind: str, value: str) -> str:
    """Return value if it is a valid containerd identifier, else raise InvalidIdentifier."""
    if not value:
        raise InvalidIdentifier(f"{kind} must not be empty")
    if len(value) > MAX_IDENTIFIER:
        raise InvalidIdentifier(f"{kind} {value[:20]!r}... is longer than {MAX_IDENTIFIER}")
    if not _IDENTIFIER.match(value):
        raise InvalidIdentifier(
            f"{kind} {value!r} is invalid: use letters, digits and single . _ - between them"
        )
    return value


def is_identifier(value: str) -> bool:
    """Whether value passes check_identifier."""
    return bool(value) and len(value) <= MAX_IDENTIFIER and bool(_IDENTIFIER.match(value))


def socket_address(containerd_address: str, namespace: str, group: str) -> str:
    """The shim's ttrpc address, derived as containerd's shims derive theirs."""
    try:  # the builtin module: hashlib would load OpenSSL, ~3 ms of every start
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256
    digest = sha256(os.path.join(containerd_address, namespace, group).encode()).hexdigest()
    return f"unix://{SHIM_SOCKET_DIR}/{digest}"


def sandbox_dir(namespace: str, sandbox_id: str) -> Path:
    """Per-sandbox state: /run/pykata/<namespace>/<sandbox-id>/."""
    check_identifier("namespace", namespace)
    check_identifier("sandbox id", sandbox_id)
    return STATE_ROOT / namespace / sandbox_id


def read_bundle_spec(bundle: str) -> object:
    """The bundle's config.json as parsed, unchecked (OSError, ValueError if it cannot be).

    For `start` and `delete`, which need only its annotations; the daemon's Create
    reads it with checks and a size limit (shim.task_service.service).
    """
    with open(os.path.join(bundle, SPEC_FILE), "rb") as f:
        return json.load(f)


def group_of(spec: object, container_id: str) -> str:
    """The sandbox a container belongs to: its group annotation, else itself.

    The annotation is the pod spec's (not trusted): a value that is not a containerd
    identifier raises InvalidIdentifier, so it never becomes part of a host path.
    """
    annotations = spec.get("annotations") if isinstance(spec, dict) else None
    if not isinstance(annotations, dict):
        return container_id
    for key in GROUP_ANNOTATIONS:
        value = annotations.get(key)
        if value:
            if not isinstance(value, str):
                raise InvalidIdentifier(f"annotation {key} must be a string")
            return check_identifier(f"sandbox id (annotation {key})", value)
    return container_id


def check_state_dir(state_dir: Path) -> Path:
    """state_dir if it is exactly STATE_ROOT/<namespace>/<sandbox-id>, else InvalidIdentifier.

    Both names must be identifiers and neither may be a symlink: what passes is a
    directory pykata made, never one a spec, an annotation or a planted link points to.
    """
    state_dir = Path(state_dir)
    root = Path(os.path.realpath(STATE_ROOT))
    namespace_dir = state_dir.parent
    if Path(os.path.realpath(namespace_dir.parent)) != root:
        raise InvalidIdentifier(f"{state_dir} is not a sandbox directory under {STATE_ROOT}")
    check_identifier("namespace", namespace_dir.name)
    check_identifier("sandbox id", state_dir.name)
    for part in (namespace_dir, state_dir):
        if part.is_symlink():
            raise InvalidIdentifier(f"{part} is a symlink, not a sandbox directory pykata made")
    return state_dir


PRIVATE_DIR_MODE = 0o700


def private_dir(
    path: str | os.PathLike[str], top: str | os.PathLike[str] | None = None
) -> Path:
    """Make directory `path` exist with mode 0700, whatever the umask; return it.

    Every directory from `top` down to `path` is made the same way, or tightened to
    0700 when it exists with a wider mode (older versions made them 0755): no other
    user lists sandbox ids or reaches anything below. `top` defaults to STATE_ROOT
    for a path under it, else to `path` itself; directories above `top` are made as
    `mkdir -p` makes them and left as they are. Below `top`, a symlink raises OSError.
    """
    path = Path(path)
    if top is None:
        top = STATE_ROOT if path.is_relative_to(STATE_ROOT) else path
    top = Path(top)
    parts = path.relative_to(top).parts  # ValueError if path is not under top
    top.parent.mkdir(parents=True, exist_ok=True)
    _make_private(top, follow=True)  # the root may be a link the operator chose
    for i in range(len(parts)):
        _make_private(top.joinpath(*parts[: i + 1]), follow=False)
    return path


def _make_private(directory: Path, *, follow: bool) -> None:
    import contextlib
    import stat

    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, PRIVATE_DIR_MODE)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(directory, flags)
    try:
        mode = os.fstat(fd).st_mode
        # a shared sticky directory (/tmp named as the root by mistake) is never narrowed
        if stat.S_IMODE(mode) != PRIVATE_DIR_MODE and not mode & stat.S_ISVTX:
            os.fchmod(fd, PRIVATE_DIR_MODE)
    finally:
        os.close(fd)


def socket_is_served(path: str, timeout: float = 0.5) -> bool:
    """Does a process accept connections on this Unix socket file?

    False only when nobody listens (the socket of a dead daemon) or the file is
    gone; a daemon too busy to accept in time still counts as serving it.
    """
    import errno
    import socket

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
    except OSError as exc:
        return exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    finally:
        probe.close()
    return True


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Replace a file in one step (a crash never leaves half of it); the temp name is per pid."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def recorded_qemu_pid(state_dir: Path) -> int:
    """The pid in a sandbox's QEMU pid file (0 if there is none)."""
    try:
        return int((state_dir / QEMU_PID_FILE).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0

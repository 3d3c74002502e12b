"""The pod's cgroup on the host: the VM counts against what the pod was granted.

Kata's `sandbox_cgroup_only`: the shim daemon joins the cgroup containerd (or CRI) names
for the sandbox before it starts virtiofsd and QEMU, so they are born in it, and the
pod's limits (kubelet's pod cgroup above it, RuntimeClass overhead included) bound the
whole VM. pykata sets no limits of its own there, as Kata does not. At the pod's end
the shim moves back to where it was and removes the cgroup folders it made.

cgroup v1 (every mounted hierarchy, as runc joins them), v2, and the hybrid layout
(v1 controllers plus a v2 mount); paths in the cgroupfs driver's form (`/a/b`) or the
systemd driver's (`slice:prefix:name`, turned into the path systemd would give it, made
by hand: no D-Bus). The path comes from the pod spec: it is validated, never followed
out of a hierarchy, and never the root cgroup.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shim.paths import CGROUP_FILE, write_atomic

MOUNTINFO = "/proc/self/mountinfo"
V2_CONTROLLERS = ("cpu", "cpuset", "io", "memory", "pids")  # enabled down the path on v2
MAX_PATH = 4096


class CgroupError(Exception):
    """The pod's cgroup cannot be joined (the host's side: the pod cannot start)."""


class CgroupPathError(CgroupError, ValueError):
    """A cgroup path from the spec that cannot be used (the request's fault)."""


def systemd_path(spec: str) -> str:
    """`slice:prefix:name` as the cgroup path systemd gives that unit.

    A slice's dashes say where it nests: `kubepods-burstable-pod1.slice` lives in
    `kubepods.slice/kubepods-burstable.slice/`."""
    slice_name, prefix, name = spec.split(":")
    parts = []
    if slice_name and slice_name != "-.slice":
        if not slice_name.endswith(".slice"):
            raise CgroupPathError(f"cgroup slice {slice_name!r} does not end in .slice")
        stem = slice_name.removesuffix(".slice")
        if not stem or "/" in stem or stem.startswith("-") or stem.endswith("-") or "--" in stem:
            raise CgroupPathError(f"cgroup slice {slice_name!r} is not a systemd slice name")
        words = stem.split("-")
        parts = ["-".join(words[: i + 1]) + ".slice" for i in range(len(words))]
    unit = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    return "/" + "/".join([*parts, unit])


def sandbox_cgroup_path(cgroups_path: str | None, default: str) -> str:
    """The cgroup (absolute, normalised) for a sandbox whose spec says `cgroups_path`.

    Raises CgroupPathError for a path that leaves the hierarchy, names its root, or is not a
    path at all (the spec is not trusted)."""
    raw = cgroups_path or default
    if not isinstance(raw, str) or len(raw) > MAX_PATH or "\0" in raw or "\n" in raw:
        raise CgroupPathError("linux.cgroupsPath must be a path")
    if raw.count(":") == 2 and not raw.startswith("/"):
        raw = systemd_path(raw)
    if ".." in raw.split("/"):
        raise CgroupPathError(f"linux.cgroupsPath {raw!r} must not contain '..'")
    path = posixpath.normpath("/" + raw.lstrip("/"))
    if path == "/":
        raise CgroupPathError("linux.cgroupsPath must name a cgroup below the root")
    return path


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy: its mount point, v1 controllers or v2."""

    mountpoint: str
    version: int  # 1 or 2
    controllers: tuple[str, ...] = ()


def hierarchies(mountinfo: str = MOUNTINFO) -> list[Hierarchy]:
    """The cgroup hierarchies mounted in this mount namespace (one per superblock)."""
    found: dict[str, Hierarchy] = {}
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            device, point = fields[2], fields[4].replace("\\040", " ")
            if tail[0] == "cgroup2":
                hierarchy = Hierarchy(point, 2)
            else:
                options = [o for o in tail[2].split(",") if o not in ("rw", "ro")]
                hierarchy = Hierarchy(point, 1, tuple(sorted(options)))
            found.setdefault(device, hierarchy)  # a hierarchy mounted twice: the first
    return list(found.values())


@dataclass
class PodCgroup:
    """The pod's cgroup in every hierarchy; what this shim made of it and where it was.

    Saved as cgroup.json in the sandbox's state dir so that teardown, even by another
    process, removes exactly the folders made here."""

    path: str
    made: list[str] = field(default_factory=list)  # the pod's own folders, if made here
    joined: list[str] = field(default_factory=list)  # folders the shim joined
    previous: dict[str, str] = field(default_factory=dict)  # hierarchy -> the shim's old one

    @classmethod
    def join(cls, path: str, pid: int, found: list[Hierarchy] | None = None) -> PodCgroup:
        """Create the cgroup where missing and move `pid` (the shim daemon) into it.

        Fails (CgroupError) naming the hierarchy when one cannot be joined; what was made
        before the failure is undone."""
        found = hierarchies() if found is None else found
        if not found:
            raise CgroupError(
                "no cgroup hierarchy is mounted: cannot place the VM in a cgroup (set "
                "[runtime] sandbox_cgroup_only = false to leave it where the shim runs)"
            )
        group = cls(path)
        try:
            for hierarchy in found:
                group._join_one(hierarchy, pid)
        except OSError as exc:
            group.leave(pid)
            group.remove()
            raise CgroupError(
                f"cannot place the VM in cgroup {path}: {exc} (set [runtime] "
                "sandbox_cgroup_only = false to leave the VM outside the pod's cgroup)"
            ) from exc
        return group

    def _join_one(self, hierarchy: Hierarchy, pid: int) -> None:
        root = Path(hierarchy.mountpoint)
        parts = Path(self.path.lstrip("/")).parts
        self.previous[hierarchy.mountpoint] = _current(pid, hierarchy)
        for depth in range(1, len(parts) + 1):
            folder = root.joinpath(*parts[:depth])
            if hierarchy.version == 2:
                _enable_controllers(folder.parent)
            try:
                folder.mkdir()
            except FileExistsError:
                if folder.is_symlink() or not folder.is_dir():
                    raise NotADirectoryError(errno.ENOTDIR, "not a cgroup", str(folder)) from None
                continue
            if depth == len(parts):  # only the pod's own: parents may be shared with others
                self.made.append(str(folder))
            if "cpuset" in hierarchy.controllers:
                _inherit_cpuset(folder)
        target = root.joinpath(*parts)
        (target / "cgroup.procs").write_text(f"{pid}\n")
        self.joined.append(str(target))

    def leave(self, pid: int) -> None:
        """Move `pid` back to the cgroups it was in before join (best effort)."""
        for mountpoint, previous in self.previous.items():
            with contextlib.suppress(OSError):
                procs = Path(mountpoint) / previous.lstrip("/") / "cgroup.procs"
                procs.write_text(f"{pid}\n")

    def remove(self, tries: int = 1) -> list[str]:
        """rmdir the folders made here; one still in use (processes not yet reaped) is
        tried again up to `tries` times, 20 ms apart, then left."""
        import time

        removed = []
        for attempt in range(tries):
            for folder in [f for f in self.made if f not in removed]:
                try:
                    os.rmdir(folder)
                except FileNotFoundError:
                    pass
                except OSError:
                    continue
                removed.append(folder)
            if len(removed) == len(self.made):
                break
            if attempt + 1 < tries:
                time.sleep(0.02)
        return removed

    def save(self, state_dir: Path) -> None:
        write_atomic(state_dir / CGROUP_FILE, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, state_dir: Path) -> PodCgroup | None:
        """The record in state_dir; None when there is none or it is not ours to trust
        (folders outside a mounted cgroup hierarchy are dropped)."""
        try:
            data = json.loads((state_dir / CGROUP_FILE).read_text())
            group = cls(
                path=str(data["path"]),
                made=[str(p) for p in data.get("made", [])],
                joined=[str(p) for p in data.get("joined", [])],
                previous={str(k): str(v) for k, v in data.get("previous", {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        roots = [h.mountpoint.rstrip("/") + "/" for h in hierarchies()]
        group.made = [p for p in group.made if any(p.startswith(r) for r in roots)]
        return group


def _current(pid: int, hierarchy: Hierarchy) -> str:
    """The cgroup `pid` is in within this hierarchy (from /proc/PID/cgroup)."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            number, controllers, path = line.rstrip("\n").split(":", 2)
            if hierarchy.version == 2 and number == "0" and controllers == "":
                return path
            if hierarchy.version == 1 and sorted(controllers.split(",")) == list(
                hierarchy.controllers
            ):
                return path
    return "/"


def _enable_controllers(folder: Path) -> None:
    """On v2, let the children of `folder` use the controllers it has (best effort: a
    parent that holds processes, or a delegated tree, may refuse)."""
    try:
        available = set((folder / "cgroup.controllers").read_text().split())
        enabled = set((folder / "cgroup.subtree_control").read_text().split())
    except OSError:
        return
    wanted = [c for c in V2_CONTROLLERS if c in available and c not in enabled]
    if wanted:
        with contextlib.suppress(OSError):
            (folder / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))


def _inherit_cpuset(folder: Path) -> None:
    """A new v1 cpuset cgroup starts with no CPUs and no memory nodes: give it its parent's
    (a task cannot join it otherwise)."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        own = folder / name
        with contextlib.suppress(OSError):
            current = own.read_text().strip() if own.exists() else ""
            if not current:
                own.write_text((folder.parent / name).read_text())


def remove_recorded(state_dir: Path) -> list[str]:
    """Teardown's step: rmdir the cgroup folders state_dir's record says were made."""
    group = PodCgroup.load(state_dir)
    if group is None:
        return []
    removed = group.remove(tries=50)
    if len(removed) == len(group.made):
        with contextlib.suppress(OSError):
            (state_dir / CGROUP_FILE).unlink()
    return [f"removed cgroup {folder}" for folder in removed]

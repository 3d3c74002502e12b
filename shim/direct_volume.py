"""Directly assigned volumes: the on-disk records a CSI driver and the runtime share.

Kata's layout, under pykata's own root (shim.paths.DIRECT_VOLUMES_ROOT):

    <root>/<base64url(volume path)>/mountInfo.json   written by `direct-volume add`
    <root>/<base64url(volume path)>/<sandbox id>     empty; the runtime writes it when a
                                                     pod mounts the volume

The directory name is the volume path (the path the volume is published to on the
host, which a container's bind mount names as its source) in URL-safe base64 with
padding. mountInfo.json holds `volume-type`, `device`, `fstype` and optionally
`metadata` (string to string) and `options` (strings); it is stored as given.

Stdlib only, so the shim can record a sandbox id on its Create path cheaply.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from shim import paths

MOUNT_INFO_FILE = "mountInfo.json"


class DirectVolumeError(Exception):
    """A record that is missing, malformed, or in the way."""


@dataclass
class MountInfo:
    """What the runtime needs to mount a host block device in the guest."""

    volume_type: str = ""
    device: str = ""
    fstype: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    options: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, text: str) -> MountInfo:
        """Parse mountInfo.json text; raises DirectVolumeError when it is not one."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise DirectVolumeError(f"mount info is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise DirectVolumeError("mount info must be a JSON object")
        info = cls()
        for key, attr in (
            ("volume-type", "volume_type"),
            ("device", "device"),
            ("fstype", "fstype"),
        ):
            value = data.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise DirectVolumeError(f"mount info {key!r} must be a string")
            setattr(info, attr, value)
        metadata = data.get("metadata")
        if metadata is not None:
            if not isinstance(metadata, dict) or not all(
                isinstance(v, str) for v in metadata.values()
            ):
                raise DirectVolumeError("mount info 'metadata' must map strings to strings")
            info.metadata = dict(metadata)
        options = data.get("options")
        if options is not None:
            if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
                raise DirectVolumeError("mount info 'options' must be a list of strings")
            info.options = list(options)
        return info


def _root(root: Path | None) -> Path:
    return root if root is not None else paths.DIRECT_VOLUMES_ROOT


def encode(volume_path: str) -> str:
    """The directory name for a volume path: URL-safe base64, padded (Go's URLEncoding)."""
    return base64.urlsafe_b64encode(volume_path.encode()).decode()


def volume_dir(volume_path: str, root: Path | None = None) -> Path:
    """Where a volume's records live."""
    if not volume_path:
        raise DirectVolumeError("a volume path is required")
    return _root(root) / encode(volume_path)


def add(volume_path: str, mount_info: str, root: Path | None = None) -> Path:
    """Record a volume's mount info (the text as given, once it parses); returns the file."""
    directory = volume_dir(volume_path, root)
    if directory.exists() and not directory.is_dir():
        raise DirectVolumeError(f"{directory} should be a directory")
    MountInfo.from_json(mount_info)
    paths.private_dir(directory, top=root)  # root None: from STATE_ROOT down
    target = directory / MOUNT_INFO_FILE
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(mount_info)
    return target


def remove(volume_path: str, root: Path | None = None) -> None:
    """Forget a volume and whatever was recorded with it; nothing to remove is no error."""
    shutil.rmtree(volume_dir(volume_path, root), ignore_errors=True)


def mount_info(volume_path: str, root: Path | None = None) -> MountInfo | None:
    """A volume's mount info, or None when it was never added."""
    try:
        text = (volume_dir(volume_path, root) / MOUNT_INFO_FILE).read_text()
    except FileNotFoundError:
        return None
    return MountInfo.from_json(text)


def record_sandbox(sandbox_id: str, volume_path: str, root: Path | None = None) -> None:
    """Note that `sandbox_id` mounts the volume (for the shim when it mounts one)."""
    directory = volume_dir(volume_path, root)
    if not (directory / MOUNT_INFO_FILE).is_file():
        raise DirectVolumeError(f"no mount info for {volume_path}")
    try:
        paths.check_identifier("sandbox id", sandbox_id)
    except paths.InvalidIdentifier as exc:
        raise DirectVolumeError(str(exc)) from None
    fd = os.open(directory / sandbox_id, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)


def sandbox_for(volume_path: str, root: Path | None = None) -> str:
    """The sandbox that uses the volume (the first recorded, by name)."""
    directory = volume_dir(volume_path, root)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        raise DirectVolumeError(f"volume {volume_path} was not added") from None
    for name in names:
        if name != MOUNT_INFO_FILE:
            return name
    raise DirectVolumeError(f"no sandbox found for {volume_path}")

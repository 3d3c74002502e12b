"""manifest.json: what an image was built from, and the fingerprint that says so."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT = 1


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: Path, data: bytes | None = None) -> dict[str, Any]:
    """{file, sha256, size} of an output file; ``data``: its bytes, already in memory."""
    if data is None:
        return {"file": path.name, "sha256": sha256_file(path), "size": path.stat().st_size}
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def tree_digest(paths: list[Path], h: Any = None) -> str:
    """sha256 over the names and contents of every file under ``paths``."""
    h = h or hashlib.sha256()
    for top in paths:
        if top.is_file():
            files = [top]
        else:
            files = sorted(p for p in top.rglob("*")
                           if p.is_file() and "__pycache__" not in p.parts)
        for f in files:
            h.update(str(f).encode() + b"\0")
            h.update(f.read_bytes())
    return h.hexdigest()


def fingerprint(inputs: dict[str, Any], trees: list[Path]) -> str:
    """One digest of the build inputs (versions, options) and source trees."""
    h = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode())
    return tree_digest(trees, h)


def load(out: Path) -> dict[str, Any] | None:
    """The manifest in ``out``, or None."""
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def outputs_intact(out: Path, manifest: dict[str, Any]) -> bool:
    """Kernel, initrd (and image) named by the manifest exist with the recorded size and
    sha256."""
    for key in ("kernel", "initrd", "image", "image_initrd"):
        if key not in manifest and key.startswith("image"):
            continue  # older manifests have no image (their fingerprint differs anyway)
        rec = manifest.get(key) or {}
        path = out / rec.get("file", "")
        if not path.is_file() or path.stat().st_size != rec.get("size"):
            return False
        if sha256_file(path) != rec.get("sha256"):
            return False
    return True


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically unless the file already holds exactly it."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def write(out: Path, manifest: dict[str, Any]) -> bool:
    """Write manifest.json (sorted keys, trailing newline); True if it changed."""
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    return write_if_changed(out / MANIFEST, text.encode())

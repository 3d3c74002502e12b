"""manifest.json, fingerprints and write-only-if-changed."""

from __future__ import annotations

import json
from pathlib import Path

from guest import manifest


def test_write_if_changed_leaves_identical_files_alone(tmp_path: Path) -> None:
    f = tmp_path / "x.img"
    assert manifest.write_if_changed(f, b"abc")
    before = f.stat().st_mtime_ns
    assert not manifest.write_if_changed(f, b"abc")
    assert f.stat().st_mtime_ns == before
    assert manifest.write_if_changed(f, b"abd")
    assert f.read_bytes() == b"abd"


def test_manifest_roundtrip_and_intact(tmp_path: Path) -> None:
    (tmp_path / "vmlinuz-1").write_bytes(b"kernel")
    (tmp_path / "pykata-initrd.img").write_bytes(b"initrd")
    m = {"format": 1, "kernel": manifest.file_record(tmp_path / "vmlinuz-1"),
         "initrd": manifest.file_record(tmp_path / "pykata-initrd.img"),
         "packages": {"busybox-static": "1:1.35.0-4"}, "modules": ["virtio", "virtio_pci"]}
    assert manifest.write(tmp_path, m)
    assert not manifest.write(tmp_path, m)
    loaded = manifest.load(tmp_path)
    assert loaded == json.loads((tmp_path / "manifest.json").read_text()) == m
    assert loaded["kernel"]["size"] == 6
    assert len(loaded["initrd"]["sha256"]) == 64
    assert manifest.outputs_intact(tmp_path, loaded)
    (tmp_path / "pykata-initrd.img").write_bytes(b"INITRD")
    assert not manifest.outputs_intact(tmp_path, loaded)


def test_load_missing_or_broken(tmp_path: Path) -> None:
    assert manifest.load(tmp_path) is None
    (tmp_path / "manifest.json").write_text("{")
    assert manifest.load(tmp_path) is None


def test_fingerprint_follows_inputs_and_files(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    fp = manifest.fingerprint({"debs": {"libc6": ["2.36", "aa"]}}, [tmp_path])
    assert fp == manifest.fingerprint({"debs": {"libc6": ["2.36", "aa"]}}, [tmp_path])
    assert fp != manifest.fingerprint({"debs": {"libc6": ["2.37", "aa"]}}, [tmp_path])
    (tmp_path / "a.py").write_text("x = 2\n")
    assert fp != manifest.fingerprint({"debs": {"libc6": ["2.36", "aa"]}}, [tmp_path])

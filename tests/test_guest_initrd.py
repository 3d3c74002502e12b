"""The cpio writer: a tiny tree, checked with cpio(1)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from guest import initrd

pytestmark = pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")


def tiny_tree(root: Path) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "init").write_text("#!/bin/sh\necho hi\n")
    (root / "init").chmod(0o755)
    (root / "usr/bin/busybox").write_bytes(b"\x7fELF" + b"x" * 1001)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin/sh").symlink_to("busybox")
    (root / "empty").mkdir()
    return root


def cpio_list(archive: bytes, verbose: bool = False) -> list[str]:
    r = subprocess.run(["cpio", "-itv" if verbose else "-it", "--quiet"], input=archive,
                       capture_output=True, check=True)
    return r.stdout.decode().splitlines()


def test_cpio_lists_every_member(tmp_path: Path) -> None:
    data, raw = initrd.build(tiny_tree(tmp_path / "root"))
    unpacked = gzip.decompress(data)
    assert len(unpacked) == raw
    names = cpio_list(unpacked)
    assert names.index("usr") < names.index("usr/bin") < names.index("usr/bin/busybox")
    assert {"init", "bin", "usr/bin/sh", "empty", "dev", "dev/console", "dev/null"} <= set(names)


def test_modes_owners_links_and_devices(tmp_path: Path) -> None:
    data, _ = initrd.build(tiny_tree(tmp_path / "root"))
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line
             for line in cpio_list(gzip.decompress(data), verbose=True)}
    assert lines["init"].startswith("-rwxr-xr-x")
    assert " root " in lines["init"]
    assert lines["bin"].startswith("l") and lines["bin"].endswith("-> usr/bin")
    assert lines["dev/console"].startswith("crw-------")
    assert "5," in lines["dev/console"]


def test_unpacks_to_the_same_contents(tmp_path: Path) -> None:
    data, _ = initrd.build(tiny_tree(tmp_path / "root"))
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames"],
                   input=gzip.decompress(data), cwd=out, check=True, capture_output=True)
    assert (out / "init").read_text() == "#!/bin/sh\necho hi\n"
    assert (out / "usr/bin/busybox").stat().st_size == 1005
    assert (out / "usr/bin/sh").readlink() == Path("busybox")


def test_reproducible(tmp_path: Path) -> None:
    a, _ = initrd.build(tiny_tree(tmp_path / "a"))
    b, _ = initrd.build(tiny_tree(tmp_path / "b"))
    assert a == b
    none, raw = initrd.build(tmp_path / "a", "none")
    assert len(none) == raw and none.startswith(b"070701")

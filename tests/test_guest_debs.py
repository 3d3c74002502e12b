"""apt-cache output parsing and cache file names (no apt run)."""

from __future__ import annotations

from guest.debs import Deb, depends_names, parse_madison, parse_paragraphs

SHOW = """\
Package: busybox-static
Version: 1:1.35.0-4+deb12u1+b1
Architecture: amd64
Size: 928188
SHA256: abc123
Description: Standalone rescue shell
 with tons of builtin utilities

Package: python3.11-minimal
Version: 3.11.2-6+deb12u9
Depends: libpython3.11-minimal (= 3.11.2-6+deb12u9), libexpat1 (>= 2.1~beta3),
 zlib1g (>= 1:1.2.0), media-types | mime-support
"""


def test_paragraphs_and_continuations() -> None:
    paras = parse_paragraphs(SHOW)
    assert [p["Package"] for p in paras] == ["busybox-static", "python3.11-minimal"]
    assert paras[0]["Description"].endswith("with tons of builtin utilities")
    assert depends_names(paras[1]["Depends"]) == [
        "libpython3.11-minimal", "libexpat1", "zlib1g", "media-types"]


def test_depends_of_the_kernel_meta_package() -> None:
    assert depends_names("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)") == [
        "linux-image-6.1.0-56-cloud-amd64"]


def test_filename_quotes_the_epoch() -> None:
    deb = Deb("busybox-static", "1:1.35.0-4+deb12u1+b1", "amd64", "", 0)
    assert deb.filename == "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"


def test_madison_picks_the_suite() -> None:
    text = """\
     libc6 | 2.41-12+deb13u5 | http://mirror.invalid/debian trixie/main amd64 Packages
     libc6 | 2.36-9+deb12u14 | http://mirror.invalid/debian bookworm/main amd64 Packages
 virtiofsd | 1.13.2-1+deb13u1 | http://mirror.invalid/debian trixie/main amd64 Packages
"""
    assert parse_madison(text, "trixie") == {"libc6": "2.41-12+deb13u5",
                                             "virtiofsd": "1.13.2-1+deb13u1"}
    assert parse_madison(text, "bookworm") == {"libc6": "2.36-9+deb12u14"}
    assert parse_madison(text, "sid") == {}


def test_missing_package_updates_once_then_names_it(monkeypatch, tmp_path) -> None:
    import subprocess

    import pytest

    from guest import debs
    from guest.ui import BuildError

    calls: list[list[str]] = []

    def fake_run(cmd, cwd=None):
        calls.append(cmd)
        out = SHOW if cmd[:2] == ["apt-cache", "show"] else ""
        return subprocess.CompletedProcess(cmd, 0, out, "")

    monkeypatch.setattr(debs, "_run", fake_run)
    apt = debs.Apt(tmp_path)
    assert apt.resolve(["busybox-static"])["busybox-static"].version == "1:1.35.0-4+deb12u1+b1"
    assert not any(c[:2] == ["apt-get", "update"] for c in calls)
    with pytest.raises(BuildError, match="no-such-package"):
        apt.resolve(["busybox-static", "no-such-package"])
    assert sum(c[:2] == ["apt-get", "update"] for c in calls) == 1
    with pytest.raises(BuildError, match="no-such-package"):
        apt.resolve(["no-such-package"])
    assert sum(c[:2] == ["apt-get", "update"] for c in calls) == 1

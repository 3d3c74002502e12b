"""`pykata-image host-vhost-vsock`: the private apt set-up and the installer, with apt and
the package stood in for (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guest import private_apt, vhost_vsock
from guest.ui import BuildError

FAKE = "#!/bin/sh\necho 'vhost-device-vsock 0.3.0'\n"


def test_the_private_apt_setup_never_reads_the_hosts(tmp_path, monkeypatch):
    monkeypatch.setattr("guest.virtiofsd.debian_mirror",
                        lambda: ("http://m.invalid/debian", "/k.gpg"))
    apt = private_apt.SuiteApt("sid", tmp_path)
    try:
        sources = (apt.apt_dir / "sources.list").read_text()
        assert sources == "deb [signed-by=/k.gpg] http://m.invalid/debian sid main\n"
        options = " ".join(private_apt._options(apt.apt_dir))
        assert "Dir::Etc::sourceparts=-" in options  # not /etc/apt/sources.list.d
        assert f"Dir::State::status={apt.apt_dir / 'status'}" in options
        assert (apt.apt_dir / "status").read_text() == ""
    finally:
        apt.close()
    assert not apt.work.exists()


class FakeApt:
    """SuiteApt with the package as a shell script standing in for the binary."""

    def __init__(self, suite, parent, version="0.3.0-2", script=FAKE):
        self.work = Path(parent) / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.version, self.script, self.unpacked = version, script, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def versions(self, packages):
        return {p: self.version for p in packages}

    def unpack(self, packages, dest):
        self.unpacked += 1
        binary = dest / "usr/bin/vhost-device-vsock"
        binary.parent.mkdir(parents=True)
        binary.write_text(self.script)
        binary.chmod(0o755)


def test_install_then_up_to_date(tmp_path, monkeypatch):
    apts = []
    monkeypatch.setattr(vhost_vsock, "SuiteApt",
                        lambda suite, parent: apts.append(FakeApt(suite, parent)) or apts[-1])
    out = tmp_path / "out"
    binary = vhost_vsock.install(out, tmp_path / "cache")
    assert binary == out / "vhost-device-vsock" and binary.stat().st_mode & 0o111
    assert json.loads((out / "versions.json").read_text()) == {"vhost-device-vsock": "0.3.0-2"}
    assert vhost_vsock.install(out, tmp_path / "cache") == binary
    assert [a.unpacked for a in apts] == [1, 0]  # the second run fetched nothing


def test_a_binary_that_does_not_run_here_is_refused(tmp_path, monkeypatch):
    script = ("#!/bin/sh\necho \"vhost-device-vsock: /lib/x86_64-linux-gnu/libc.so.6: "
              "version 'GLIBC_2.99' not found\" >&2\nexit 1\n")
    monkeypatch.setattr(vhost_vsock, "SuiteApt",
                        lambda suite, parent: FakeApt(suite, parent, script=script))
    with pytest.raises(BuildError, match="needs a newer glibc"):
        vhost_vsock.install(tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out" / "vhost-device-vsock").exists()

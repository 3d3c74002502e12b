"""virtiofsd apt source/pin/wrapper text, the boot command line, /init."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from guest import boot, builder, virtiofsd

INIT = Path(__file__).resolve().parent.parent / "guest/init/init.sh"


def test_mirror_from_deb822_and_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    assert virtiofsd.debian_mirror((tmp_path,)) == (
        "http://mirror.invalid/debian", "/usr/share/keyrings/debian-archive-keyring.gpg")
    other = tmp_path / "other"
    other.mkdir()
    (other / "sources.list").write_text("deb [arch=amd64] http://m.invalid/debian bookworm main\n")
    assert virtiofsd.debian_mirror((other / "sources.list",))[0] == "http://m.invalid/debian"


def test_pin_keeps_trixie_below_100() -> None:
    text = virtiofsd.preferences_text()
    prio = int(re.search(r"Pin-Priority: (\d+)", text).group(1))
    assert prio < 100 and "Pin: release n=trixie" in text
    assert "Suites: trixie" in virtiofsd.sources_text("http://m.invalid/debian", "/k.gpg")


def test_wrapper_uses_the_private_loader(tmp_path: Path) -> None:
    text = virtiofsd.wrapper_text(tmp_path)
    assert text.startswith("#!/bin/sh\n")
    assert f"{tmp_path}/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" in text
    assert f'--library-path "{tmp_path}/usr/lib/x86_64-linux-gnu"' in text
    assert '/usr/libexec/virtiofsd" "$@"' in text


def test_qemu_command_has_the_guest_devices(tmp_path: Path) -> None:
    cmd = " ".join(boot.qemu_command(tmp_path, tmp_path, 512, tmp_path / "v.sock", boot.APPEND))
    for part in ("q35,accel=tcg", "-no-reboot", "virtserialport,chardev=agent,"
                 "name=agent.channel.0", "virtio-net-pci", "memory-backend-memfd",
                 "share=on", "vhost-user-fs-pci,chardev=vfs,tag=kataShared",
                 "pykata.selftest=1", "virtio-rng-pci"):
        assert part in cmd
    assert "memory-backend" not in " ".join(boot.qemu_command(tmp_path, tmp_path, 512, None, ""))


def test_selftest_line_parsing() -> None:
    fields = boot.parse_line("PYKATA-SELFTEST-OK python=3.11.2 ports=agent.channel.0 t_ok=4.1")
    assert fields == {"python": "3.11.2", "ports": "agent.channel.0", "t_ok": "4.1"}


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
def test_init_script_parses_and_documents_its_knobs() -> None:
    subprocess.run(["sh", "-n", str(INIT)], check=True)
    text = INIT.read_text()
    for knob in builder.INIT_KNOBS:
        assert knob.split("=")[0] in text
    assert "exec $PYTHON -m agent" in text

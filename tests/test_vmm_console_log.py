"""The guest console log stays under its cap: trimmed in place under QEMU's O_APPEND fd."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import pytest

from shim.vmm import console_log


@pytest.fixture
def small_cap(monkeypatch):
    monkeypatch.setattr(console_log, "CAP", 500)
    monkeypatch.setattr(console_log, "KEEP", 20)


def test_a_log_under_its_cap_or_absent_is_left_alone(tmp_path, small_cap):
    log = tmp_path / "console.log"
    assert console_log.trim(log) == 0
    log.write_bytes(b"x" * 500)
    assert console_log.trim(log) == 0
    assert log.read_bytes() == b"x" * 500


def test_a_log_over_its_cap_keeps_its_end_in_place_for_the_appending_writer(tmp_path, small_cap):
    log = tmp_path / "console.log"
    qemu = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # what logappend=on opens
    try:
        os.write(qemu, b"a" * 480 + b"the last twenty byte")
        inode = os.fstat(qemu).st_ino
        assert console_log.trim(log) == 0
        os.write(qemu, b"!")  # 501 bytes: over
        assert console_log.trim(log) == 481
        os.write(qemu, b"after the trim\n")
        assert os.stat(log).st_ino == inode
    finally:
        os.close(qemu)
    mark = console_log.MARK % (500, 481)
    assert log.read_bytes() == mark + b"he last twenty byte!" + b"after the trim\n"
    log.write_bytes(b"z" * 600)
    assert console_log.trim(log, dropped=481) == 580
    assert log.read_bytes().startswith(console_log.MARK % (500, 481 + 580))


def test_a_reader_past_the_end_goes_on_after_the_kept_tail():
    head = console_log.MARK % (500, 481) + b"kept"
    mark = len(console_log.MARK % (500, 481))
    assert console_log.resume_offset(head, size=mark + 30, keep=20) == mark + 20
    assert console_log.resume_offset(head, size=mark + 5, keep=20) == mark + 5
    assert console_log.resume_offset(b"guest text\n", size=100, keep=20) == 0


async def test_keep_capped_trims_while_it_runs(tmp_path, small_cap):
    log = tmp_path / "console.log"
    task = asyncio.ensure_future(console_log.keep_capped(log, interval=0.01))
    try:
        await asyncio.sleep(0.05)  # no log yet: nothing to do, no error
        log.write_bytes(b"y" * 5000)
        for _ in range(1000):
            if log.stat().st_size < 500:
                break
            await asyncio.sleep(0.01)
        assert log.read_bytes().endswith(b"\n" + b"y" * 20)
    finally:
        task.cancel()


def test_console_follow_goes_on_across_a_trim(tmp_path, monkeypatch, capsysbinary, small_cap):
    """`pykata-runtime console -f` prints what came after a trim once, not the kept tail
    again; it ends when the log goes."""
    from shim import paths
    from shim.admin import run, sandboxes

    state = tmp_path / "state" / "k8s.io" / "pod1"
    state.mkdir(parents=True)
    (state / "sandbox.json").write_text("{}")
    log = state / "console.log"
    log.write_bytes(b"0123456789" * 100)
    monkeypatch.setattr(paths, "STATE_ROOT", tmp_path / "state")
    steps = [
        lambda: (console_log.trim(log), log.write_bytes(log.read_bytes() + b"new\n")),
        log.unlink,
    ]
    monkeypatch.setattr(sandboxes, "time", SimpleNamespace(sleep=lambda s: steps.pop(0)()))
    assert run(["console", "-f", "--raw", "pod1"]) == 0
    assert capsysbinary.readouterr().out == b"0123456789" * 100 + b"new\n"

"""Small parts: vsock CIDs, the child-exit watcher, netns prefix, log tails, lazy imports."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys

import pytest

from shim.vmm.child import ChildProcess
from shim.vmm.qemu import netns_prefix, tail
from shim.vmm.vsock import FIRST_CID, MAX_CID, VHOST_VSOCK_SET_GUEST_CID, claim_cid


def fake_ioctl(taken: set[int], calls: list[int]):
    def ioctl(fd, request, arg):
        assert request == VHOST_VSOCK_SET_GUEST_CID and len(arg) == 8
        cid = int.from_bytes(arg, "little")
        calls.append(cid)
        if cid in taken:
            raise OSError(errno.EADDRINUSE, "in use")
        return 0
    return ioctl


def test_claim_cid_skips_used_ones_and_wraps():
    calls: list[int] = []
    assert claim_cid(3, start=10, ioctl=fake_ioctl({10, 11}, calls)) == 12
    assert calls == [10, 11, 12]
    calls.clear()
    assert claim_cid(3, start=MAX_CID, ioctl=fake_ioctl({MAX_CID}, calls)) == FIRST_CID
    with pytest.raises(OSError) as err:
        claim_cid(3, start=5, attempts=2, ioctl=fake_ioctl({5, 6}, []))
    assert err.value.errno == errno.EADDRINUSE


def test_claim_cid_other_errors_propagate():
    def ioctl(fd, request, arg):
        raise OSError(errno.EBADF, "bad fd")
    with pytest.raises(OSError) as err:
        claim_cid(3, start=5, ioctl=ioctl)
    assert err.value.errno == errno.EBADF


async def test_child_exit_is_awaitable():
    child = ChildProcess(subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"]), "t")
    assert await child.wait(10) == 7
    assert child.returncode == 7
    child.close()


async def test_child_terminate_then_kill():
    popen = subprocess.Popen([sys.executable, "-c",
                              "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                              "print('ready', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE)
    assert popen.stdout is not None and popen.stdout.readline() == b"ready\n"
    child = ChildProcess(popen, "stubborn")
    assert await child.wait(0.05) is None
    assert await child.terminate(0.2) == -signal.SIGKILL
    child.send_signal(signal.SIGTERM)  # reaped already: no error, no stray signal
    child.close()


def test_netns_prefix():
    assert netns_prefix(None) == []
    prefix = netns_prefix("/var/run/netns/pod1")
    assert prefix[0].endswith("nsenter") and prefix[1:] == ["--net=/var/run/netns/pod1", "--"]


def test_tail_strips_terminal_noise(tmp_path):
    log = tmp_path / "console.log"
    log.write_bytes(b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS\r\n\r\n" + b"line\n" * 50 + b"last\r\n")
    text = tail(log, max_lines=3)
    assert text == "line\nline\nlast"
    assert tail(tmp_path / "missing") == ""


def test_importing_the_package_is_cheap():
    code = ("import sys, shim.vmm; shim.vmm.kill_from_state('/nonexistent');"
            "heavy = [m for m in ('asyncio', 'structlog', 'qemu.qmp', 'google.protobuf',"
            " 'shim.vmm.vm') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"

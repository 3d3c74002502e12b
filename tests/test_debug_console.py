"""The debug console, both ends, with real shells on real ptys.

The guest end (agent/debug_console.py) is served on one end of a socketpair or
on a Unix socket standing in for QEMU's chardev; the shell is the guest's
(busybox sh, with its line editor) when the host has busybox, and /bin/sh too.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import threading
from pathlib import Path

import pytest
from agent_support import Agent, requires_agent_host

from agent import config as agent_config
from agent import debug_console as guest
from agent.children import Reaper
from protos.kata import agent_pb2
from shim import debug_console as host
from shim.monitor.parse import parse

SHELLS = [("/bin/sh",)]
if shutil.which("busybox"):
    SHELLS.insert(0, (shutil.which("busybox") or "busybox", "sh"))  # the guest's shell


@pytest.fixture
async def reaper():
    reaper = Reaper()
    reaper.install()
    yield reaper
    reaper.uninstall()


class HostEnd:
    """The host's end of the port: send lines, wait for output."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.data = b""

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def until(self, pattern: bytes, timeout: float = 10) -> re.Match:
        """Wait for `pattern` (a regex the echo of the typed line cannot match); what it
        matched and what came before are consumed, the rest stays for the next wait."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while (found := re.search(pattern, self.data)) is None:
                chunk = await loop.sock_recv(self.sock, 65536)
                assert chunk, f"closed before {pattern!r}; got {self.data!r}"
                self.data += chunk
        self.data = self.data[found.end() :]
        return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- the guest end ------------------------------------------------------------------------
@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: " ".join(s))
async def test_shell_on_a_pty_restarts_and_is_hung_up_with_the_host(reaper, shell):
    host_end, port = socket.socketpair()
    port.setblocking(False)
    host = HostEnd(host_end)
    serving = asyncio.create_task(guest.session(port.fileno(), reaper, shell))
    try:
        # a terminal of its own: the shell leads its session, the pty is its terminal
        await host.send(b"test -t 0 && echo tty-$((40+2)); "
                        b"echo pid-$$-sid-$(cut -d' ' -f6 /proc/$$/stat).\n")
        await host.until(rb"tty-42")
        first, session_id = map(int, (await host.until(rb"pid-(\d+)-sid-(\d+)\.")).groups())
        assert first == session_id
        # a shell that exits is replaced while the host stays
        await host.send(b"exit 3\n")
        await host.until(rb"the shell exited \(3\), a new one starts")
        await host.send(b"echo again-$$.\n")
        second = int((await host.until(rb"again-(\d+)\.")).group(1))
        assert second != first and alive(second)
        # the host goes: the shell is hung up, the session ends
        host_end.close()
        await asyncio.wait_for(serving, 10)
        assert not alive(second)
    finally:
        serving.cancel()
        port.close()


async def test_a_flood_of_output_is_copied_whole(reaper):
    host_end, port = socket.socketpair()
    port.setblocking(False)
    host = HostEnd(host_end)
    serving = asyncio.create_task(guest.session(port.fileno(), reaper, ("/bin/sh",)))
    try:
        # Z (octal 132) is in the output only, never in the echo of the typed line
        await host.send(b"head -c 3000000 /dev/zero | tr '\\0' \"$(printf '\\132')\"; "
                        b"echo END-$((1+1))\n")
        found = await host.until(rb"END-2", timeout=30)
        assert found.string.count(b"Z") == 3000000
    finally:
        host_end.close()
        await asyncio.wait_for(serving, 10)
        port.close()


def test_host_connected_is_false_once_the_host_end_closed():
    host_end, port = socket.socketpair()
    assert guest.host_connected(port.fileno())
    host_end.close()
    assert not guest.host_connected(port.fileno())
    port.close()


def test_kernel_parameter_turns_it_on(tmp_path):
    assert agent_config.kernel_debug_console(["quiet", "agent.debug_console"])
    assert agent_config.kernel_debug_console(["agent.debug_console=1"])
    assert not agent_config.kernel_debug_console(["agent.debug_console=0", "agent.log=debug"])
    assert not agent_config.kernel_debug_console(["agent.debug_console_vport=1026"])
    assert agent_config.parse(["--debug-console", "/dev/vport0p2"]).debug_console == (
        "/dev/vport0p2")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 agent.debug_console agent.log=warning\n")
    words = agent_config.kernel_params(str(cmdline))
    assert agent_config.kernel_log_level(words) == "warning"
    assert agent_config.kernel_params(str(tmp_path / "none")) == []


# -- the host end, against the guest end on a Unix socket (QEMU's chardev stands here) -----
@pytest.fixture(params=SHELLS, ids=lambda s: " ".join(s))
async def console(request, tmp_path, reaper):
    """dbgcon.sock in a state dir, served one session per connection like QEMU + the agent."""
    path = tmp_path / "dbgcon.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.setblocking(False)
    loop = asyncio.get_running_loop()

    async def serve() -> None:
        while True:
            conn, _ = await loop.sock_accept(server)
            conn.setblocking(False)
            try:
                await guest.session(conn.fileno(), reaper, request.param)
            finally:
                conn.close()

    serving = asyncio.create_task(serve())
    yield path
    serving.cancel()
    server.close()


async def test_run_command_output_and_status(console):
    assert await host.run_command(console, ["uname", "-s"], timeout=10) == (0, b"Linux\n")
    status, output = await host.run_command(
        console, ["sh", "-c", "echo out; echo err >&2; printf 'no newline'; exit 7"], timeout=10)
    assert (status, output) == (7, b"out\nerr\nno newline")
    # arguments arrive as given: spaces, quotes, $, globs, backslashes
    tricky = ["a b", "it's", '"$HOME"', "*", "back\\slash", ""]
    status, output = await host.run_command(console, ["printf", "[%s]\\n", *tricky], timeout=10)
    assert status == 0
    assert output.decode().splitlines() == [f"[{arg}]" for arg in tricky]
    # stdin is /dev/null: a command that reads it does not hang
    assert await host.run_command(console, ["cat"], timeout=10) == (0, b"")
    assert (await host.run_command(console, ["false"], timeout=10))[0] == 1
    assert (await host.run_command(console, ["no-such-command-x"], timeout=10))[0] == 127


async def test_run_command_times_out(console):
    with pytest.raises(TimeoutError):
        await host.run_command(console, ["sleep", "30"], timeout=0.5)
    # the next connection gets a fresh shell
    assert await host.run_command(console, ["echo", "next"], timeout=10) == (0, b"next\n")


def test_command_line_refuses_what_the_shell_would_mangle():
    with pytest.raises(ValueError, match="control characters"):
        host.command_line(["echo", "a\tb"], "m")
    with pytest.raises(ValueError, match="too long"):
        host.command_line(["echo", "x" * 1000], "m")
    with pytest.raises(ValueError, match="no command"):
        host.command_line([], "m")
    line = host.command_line(["uname", "-r"], "abc")
    assert b"PYKATA-BEGIN-abc" not in line and b"PYKATA-END-abc" not in line  # the echo is safe


def test_markers_across_chunk_boundaries():
    stream = b"/ # stty -echo ...\r\nPYKATA-BEGIN-m1\nhello\nPYKATA-END-m1:5\n/ # "
    markers = host.Markers("m1")
    output = b"".join(markers.feed(stream[i : i + 1]) for i in range(len(stream)))
    assert (markers.status, output) == (5, b"hello\n")
    other = host.Markers("m1")
    assert other.feed(b"PYKATA-BEGIN-m1\nPYKATA-END-m2:0\n") == b""
    assert other.status is None


def test_main_exec_without_a_console_says_how_to_enable_it(tmp_path, capsys):
    assert host.main_exec(tmp_path / "sb1", ["uname", "-r"]) == 1
    err = capsys.readouterr().err
    assert "sandbox sb1 has no debug console" in err
    assert (
        "set debug_console_enabled = true under [agent.kata] in the runtime configuration "
        "and start the pod again" in err
    )


GUEST_SIDE = """
import asyncio, socket, sys
from agent import debug_console
from agent.children import Reaper

async def main():
    reaper = Reaper()
    reaper.install()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sys.argv[1])
    server.listen(1)
    server.setblocking(False)
    conn, _ = await asyncio.get_running_loop().sock_accept(server)
    conn.setblocking(False)
    await debug_console.session(conn.fileno(), reaper, ("/bin/sh",))

asyncio.run(main())
"""


def test_main_exec_runs_the_command(tmp_path, capfdbinary):
    """main_exec end to end; the guest end runs in a process of its own."""
    import subprocess
    import sys
    import time

    path = tmp_path / "dbgcon.sock"
    root = Path(__file__).resolve().parent.parent
    guest_side = subprocess.Popen([sys.executable, "-c", GUEST_SIDE, str(path)], cwd=root)
    try:
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert host.main_exec(tmp_path, ["sh", "-c", "echo from-the-guest; exit 4"]) == 4
        assert capfdbinary.readouterr().out == b"from-the-guest\n"
        guest_side.wait(10)  # its session ended with our connection
    finally:
        if guest_side.poll() is None:
            guest_side.kill()
            guest_side.wait()


def test_state_dir_socket_name_matches_qemu_args():
    from shim.vmm.layout import VMPaths

    assert VMPaths(Path("/run/pykata/ns/sb")).debug_console_socket == Path(
        "/run/pykata/ns/sb/dbgcon.sock")


# -- the agent as a process: the flag starts the console, GetMetrics answers --------------
@requires_agent_host
async def test_agent_process_serves_the_console_and_metrics(tmp_path):
    """A raw pty stands in for the port: a character device whose reads end once the
    host (here the master) is gone, like /dev/vportNpM."""
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    agent = await Agent(tmp_path, "--debug-console", os.ttyname(slave)).start()
    os.close(slave)
    try:
        text = (await agent.agent.GetMetrics(agent_pb2.GetMetricsRequest(), timeout=10)).metrics
        names = {f.name for f in parse(text, strict=True)}
        assert {"kata_agent_total_rss", "kata_guest_meminfo", "kata_guest_netdev_stat"} <= names
        loop = asyncio.get_running_loop()
        os.set_blocking(master, False)
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(master, "rb", 0))
        os.write(master, b"echo console-$((6*7)).\n")
        data = b""
        async with asyncio.timeout(15):
            while b"console-42." not in data:
                data += await reader.read(4096)
        transport.close()
    finally:
        await agent.stop()
    assert "debug console" in agent.log()


def test_interactive_is_a_raw_pass_through_until_ctrl_bracket(tmp_path):
    """interactive() on a terminal (a pty here) against the guest end in its own process."""
    import subprocess
    import sys
    import time

    path = tmp_path / "dbgcon.sock"
    root = Path(__file__).resolve().parent.parent
    guest_side = subprocess.Popen([sys.executable, "-c", GUEST_SIDE, str(path)], cwd=root)
    master, slave = os.openpty()
    user = None
    try:
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        code = "import sys; from shim.debug_console import interactive; "\
               "sys.exit(interactive(sys.argv[1]))"
        user = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=root,
                                stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        seen = b""

        def read_until(wanted: bytes) -> None:
            nonlocal seen
            deadline = time.monotonic() + 15
            while wanted not in seen and time.monotonic() < deadline:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
            assert wanted in seen, seen

        read_until(b"Ctrl-] leaves")
        os.write(master, b"echo hi-$((40+2)).\r")  # raw: Enter is CR, the guest's tty maps it
        read_until(b"hi-42.")
        os.write(master, b"\x1d")
        assert user.wait(10) == 0
        read_until(b"[left the debug console]")
        guest_side.wait(10)  # the host left: the session ended
    finally:
        os.close(master)
        for process in (user, guest_side):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


# -- a hostile guest: escape sequences and output without end, shown escaped and bounded ---
HOSTILE = b"\x1b]0;owned\x07\x1b[2J"
FLOOD_CHUNKS = 48  # 3 MiB without a line end


def hostile_guest(path: Path, status: int = 3) -> threading.Thread:
    """A console that answers the typed command line with HOSTILE and a flood."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        server.close()
        with conn:
            line = b""
            while b"\n" not in line:
                line += conn.recv(4096)
            marker = re.search(rb"BEGIN ([0-9a-f]{16})", line).group(1)
            conn.sendall(line + b"PYKATA-BEGIN-" + marker + b"\n" + HOSTILE + b"\n")
            for _ in range(FLOOD_CHUNKS):
                conn.sendall(b"A" * 65536)
            conn.sendall(b"PYKATA-END-" + marker + b":%d\n" % status)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_markers_hold_only_a_marker_of_a_stream_without_end():
    markers = host.Markers("m1")
    assert markers.feed(b"echo of the line\r\n" * 1000) == b""
    assert len(markers.data) < 64  # before the begin marker: only what could start it
    given = markers.feed(b"PYKATA-BEGIN-m1\n")
    for _ in range(FLOOD_CHUNKS):
        given += markers.feed(b"A" * 65536)
        assert len(markers.data) < 64
    given += markers.feed(b"PYKATA-END-m1:0\n")
    assert (markers.status, given) == (0, b"A" * 65536 * FLOOD_CHUNKS)


@pytest.mark.parametrize("raw", [False, True], ids=["escaped", "raw"])
def test_main_exec_streams_the_guest_output_escaped_unless_raw(tmp_path, monkeypatch, raw):
    held = []

    class Watched(host.Markers):
        def feed(self, chunk: bytes) -> bytes:
            output = super().feed(chunk)
            held.append(len(self.data))
            return output

    printed: list[bytes] = []
    monkeypatch.setattr(host, "Markers", Watched)
    monkeypatch.setattr(host, "_print", printed.append)
    guest_side = hostile_guest(tmp_path / "dbgcon.sock")
    assert host.main_exec(tmp_path, ["cat", "/flood"], raw=raw) == 3
    guest_side.join(10)
    shown = HOSTILE if raw else b"\\x1b]0;owned\\x07\\x1b[2J"
    assert b"".join(printed) == shown + b"\n" + b"A" * 65536 * FLOOD_CHUNKS
    # printed as it came, a chunk at a time; nothing held but a chunk's worth
    assert len(printed) > FLOOD_CHUNKS // 2
    assert max(map(len, printed)) <= host.CHUNK + 64 and max(held) <= host.CHUNK + 64


@pytest.mark.parametrize("raw", [False, True], ids=["escaped", "raw"])
def test_interactive_escapes_the_guest_unless_raw(tmp_path, raw):
    import subprocess
    import sys

    path = tmp_path / "dbgcon.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"login: " + HOSTILE + b"\r\n" + b"B" * 200000)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    code = ("import sys; from shim.debug_console import interactive; "
            "sys.exit(interactive(sys.argv[1], raw=sys.argv[2] == 'raw'))")
    root = Path(__file__).resolve().parent.parent
    keyboard, typed = os.pipe()  # stdin stays open: the console's end ends the session
    try:
        user = subprocess.Popen([sys.executable, "-c", code, str(path), "raw" if raw else "x"],
                                cwd=root, stdin=keyboard, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        out, err = user.communicate(timeout=30)
    finally:
        os.close(keyboard)
        os.close(typed)
    thread.join(10)
    server.close()
    assert user.returncode == 0, err
    shown = HOSTILE if raw else b"\\x1b]0;owned\\x07\\x1b[2J"
    assert out == b"login: " + shown + b"\r\n" + b"B" * 200000
    assert b"[the debug console closed]" in err
    assert (b"shown escaped" in err) is not raw

"""start_vm / RunningVM / teardown against a fake QEMU (fast: no VM is booted).

The fake is this file run as a script: it parses the argv we build, serves QMP
(greeting, qmp_capabilities, cont, quit, VSERPORT_CHANGE) and a ttrpc agent on
the agent chardev socket. A mode baked into its wrapper script makes it fail in
the ways a real QEMU or guest does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import struct
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- fake QEMU
def _opts(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def _chardevs(argv: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for spec in _opts(argv, "-chardev"):
        fields = dict(f.split("=", 1) for f in spec.split(",")[1:] if "=" in f)
        out[fields["id"]] = fields
    return out


async def _json_stream(reader: asyncio.StreamReader):
    """JSON objects as QEMU reads them: a stream, not lines (qemu.qmp may pretty-print)."""
    decoder, buf = json.JSONDecoder(), ""
    while chunk := await reader.read(4096):
        buf += chunk.decode()
        while buf.strip():
            try:
                obj, end = decoder.raw_decode(buf.lstrip())
            except ValueError:
                break
            buf = buf.lstrip()[end:]
            yield obj


async def _fake_qemu(mode: str, argv: list[str]) -> None:
    chardevs = _chardevs(argv)
    qmp_path = re.match(r"unix:(.*?),server", _opts(argv, "-qmp")[0]).group(1)
    Path(_opts(argv, "-pidfile")[0]).write_text(f"{os.getpid()}\n")
    with open(chardevs["console0"]["logfile"], "a") as console:
        console.write("\x1bc\x1b[2Jfake firmware\r\nfake kernel: booting\n")
    held = []
    for vhost_user in ("vfs0", "vsock0"):  # virtiofsd leaves when we hang up
        if vhost_user in chardevs:
            backend = socket.socket(socket.AF_UNIX)
            backend.connect(chardevs[vhost_user]["path"])
            held.append(backend)
    agent_path = chardevs.get("agent0", {}).get("path")
    if agent_path is None:  # hybrid vsock: the (fake) vhost-device-vsock serves the agent
        with open(chardevs["console0"]["logfile"], "a") as console:  # what the agent says
            console.write("00:00:00.000 agent[1] INFO agent.channel: listening on vsock://1024\n")
    elif mode == "agent-silent":
        silent = socket.socket(socket.AF_UNIX)
        silent.bind(agent_path)
        silent.listen()
        held.append(silent)
    else:
        from fake_hvsock import agent_server  # tests/ is this script's sys.path[0]

        server = agent_server(version="fake-qemu")
        await server.serve_unix(agent_path)
    if mode == "ignore-quit":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    done = asyncio.Event()

    async def qmp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def send(obj: dict) -> None:
            writer.write(json.dumps(obj).encode() + b"\r\n")

        def event(name: str, data: dict) -> None:
            now = time.time()
            send({"event": name, "data": data, "timestamp": {
                "seconds": int(now), "microseconds": int(now % 1 * 1e6)}})

        send({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0},
                                  "package": "fake"}, "capabilities": []}})
        async for msg in _json_stream(reader):
            send({"return": {}, **({"id": msg["id"]} if "id" in msg else {})})
            await writer.drain()
            if msg["execute"] == "cont":
                await asyncio.sleep(0.05)
                if mode != "port-never-opens":
                    event("VSERPORT_CHANGE", {"id": "channel0", "open": True})
                if mode == "crash-later":
                    await asyncio.sleep(0.3)
                    os._exit(3)
            elif msg["execute"] == "quit" and mode != "ignore-quit":
                event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
                await writer.drain()
                done.set()
                return

    qmp_server = await asyncio.start_unix_server(qmp, qmp_path)
    await done.wait()
    qmp_server.close()


def fake_qemu_main(argv: list[str]) -> int:
    if "-version" in argv:
        print("QEMU emulator version 7.2.0 (fake)")
        return 0
    mode, argv = argv[0], argv[1:]
    if "-sandbox" in argv:  # as a QEMU built with seccomp does
        from fake_seccomp import load_allow_all_filter

        load_allow_all_filter()
    if mode == "exit":
        sys.stderr.write("qemu-system-x86_64: could not load kernel '/nope': "
                         "No such file or directory\n")
        return 1
    sys.path.insert(0, str(ROOT))
    asyncio.run(_fake_qemu(mode, argv))
    return 0


def fake_virtiofsd_main(argv: list[str]) -> int:
    path = next(a.split("=", 1)[1] for a in argv if a.startswith("--socket-path="))
    if any(a in argv for a in ("--seccomp=kill", "--seccomp=log")):
        from fake_seccomp import load_allow_all_filter

        load_allow_all_filter()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    conn, _ = listener.accept()
    # vhost-user messages until QEMU (or the host probe) hangs up; GET_FEATURES is answered
    while len(header := conn.recv(12)) == 12:
        request, _flags, size = struct.unpack("<III", header)
        if size:
            conn.recv(size)
        if request == 1:
            conn.sendall(struct.pack("<IIIQ", 1, 0x5, 8, 0))
    os.unlink(path)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--fake-qemu":
        sys.exit(fake_qemu_main(sys.argv[2:]))
    sys.exit(fake_virtiofsd_main(sys.argv[2:]))


# --------------------------------------------------------------------------- tests
from shim.vmm import VMConfig, kill_from_state, procs, start_vm  # noqa: E402
from shim.vmm.confinement import ConfinementError, ConfinementFloor  # noqa: E402
from shim.vmm.errors import (  # noqa: E402
    AgentTimeoutError,
    QemuExitedError,
    VhostVsockError,
    VirtiofsdError,
    VMStartError,
)


def wrapper(tmp_path: Path, name: str, args: str) -> str:
    path = tmp_path / name
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" {args} "$@"\n')
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    for name in ("vmlinuz", "initrd.img"):
        (tmp_path / name).write_text("not used by the fake")
    (tmp_path / "shared").mkdir()
    return {"kernel": tmp_path / "vmlinuz", "initrd": tmp_path / "initrd.img",
            "shared": tmp_path / "shared", "state": tmp_path / "state",
            "cache": tmp_path / "cache"}


def config(tmp_path: Path, files: dict[str, Path], mode: str = "ok", **kw) -> VMConfig:
    kw.setdefault("shared_fs", "none")
    return VMConfig(qemu_path=wrapper(tmp_path, f"qemu-{mode}", f"--fake-qemu {mode}"),
                    kernel=str(files["kernel"]), initrd=str(files["initrd"]), accel="tcg",
                    firmware="", agent_timeout=10.0, stop_timeout=2.0, **kw)


def assert_nothing_left(state: Path, *pids: int) -> None:
    left = sorted(p.name for p in state.iterdir()) if state.exists() else []
    assert not [n for n in left if n.endswith((".sock", ".pid", ".json"))], left
    for pid in pids:
        assert not procs.is_running(pid, None), f"pid {pid} still running"


async def test_start_check_stop(tmp_path, files):
    vm = await start_vm(config(tmp_path, files), files["state"], files["shared"],
                        cache_dir=files["cache"])
    try:
        assert procs.cmdline(vm.pid)[1].endswith("test_vmm_start.py")
        record = json.loads((files["state"] / "vm.json").read_text())
        assert record["processes"]["qemu"]["pid"] == vm.pid
        assert record["processes"]["qemu"]["start_time"] == procs.start_time(vm.pid)
        assert record["agent"]["address"] == f"unix://{files['state']}/agent.sock"
        assert (await vm.agent.check()).status == 1
        from integration.agent_stubs import stubs_of
        from protos.kata import agent_pb2

        details = await stubs_of(vm.agent.transport).agent.GetGuestDetails(
            agent_pb2.GuestDetailsRequest())
        assert details.agent_details.version == "fake-qemu"
        assert set(vm.timings) >= {"qemu_launched", "qmp_ready", "port_open", "agent_ready"}
        assert "fake kernel: booting" in vm.console_log.read_text()
        assert vm.running
    finally:
        await vm.stop()
    assert not vm.running and await vm.wait_exited() == 0
    assert_nothing_left(files["state"], vm.pid)
    await vm.stop()  # idempotent


async def test_qemu_that_dies_at_start(tmp_path, files):
    with pytest.raises(QemuExitedError) as err:
        await start_vm(config(tmp_path, files, "exit"), files["state"], files["shared"],
                       cache_dir=files["cache"])
    assert err.value.exit_code == 1
    assert "could not load kernel" in str(err.value)
    assert "exited with status 1" in str(err.value)
    assert_nothing_left(files["state"])


@pytest.mark.parametrize(("mode", "says"), [
    ("port-never-opens", "never opened the agent port"),
    ("agent-silent", "the agent port was opened by the guest"),
])
async def test_agent_that_never_answers(tmp_path, files, mode, says):
    t0 = time.monotonic()
    with pytest.raises(AgentTimeoutError) as err:
        await start_vm(config(tmp_path, files, mode), files["state"], files["shared"],
                       timeout=1.5, cache_dir=files["cache"])
    assert time.monotonic() - t0 < 6
    assert "did not answer within 1.5s" in str(err.value) and says in str(err.value)
    assert "fake kernel: booting" in err.value.console_tail
    assert "\x1b" not in err.value.console_tail
    assert_nothing_left(files["state"])
    assert not [p for p in os.listdir("/proc") if p.isdigit()
                and any(mode in a for a in procs.cmdline(int(p)))]


async def test_stop_kills_a_qemu_that_ignores_quit(tmp_path, files):
    vm = await start_vm(config(tmp_path, files, "ignore-quit"), files["state"],
                        files["shared"], cache_dir=files["cache"])
    t0 = time.monotonic()
    await vm.stop(timeout=0.3)
    assert time.monotonic() - t0 < 5
    assert await vm.wait_exited() == -signal.SIGKILL
    assert_nothing_left(files["state"], vm.pid)


async def test_qemu_exiting_on_its_own(tmp_path, files):
    vm = await start_vm(config(tmp_path, files, "crash-later"), files["state"],
                        files["shared"], cache_dir=files["cache"])
    assert await asyncio.wait_for(vm.wait_exited(), 5) == 3
    await vm.stop()
    assert_nothing_left(files["state"], vm.pid)


async def test_with_virtiofsd(tmp_path, files):
    cfg = config(tmp_path, files, shared_fs="virtio-fs",
                 virtiofsd_path=wrapper(tmp_path, "virtiofsd", "--fake-virtiofsd"))
    vm = await start_vm(cfg, files["state"], files["shared"], cache_dir=files["cache"])
    assert vm.virtiofsd is not None
    vfsd_pid = vm.virtiofsd.pid
    record = json.loads((files["state"] / "vm.json").read_text())
    assert record["processes"]["virtiofsd"]["pid"] == vfsd_pid
    assert (files["state"] / "virtiofsd.pid").read_text().strip() == str(vfsd_pid)
    await vm.stop()
    assert_nothing_left(files["state"], vm.pid, vfsd_pid)


async def test_missing_virtiofsd_starts_nothing(tmp_path, files):
    cfg = config(tmp_path, files, shared_fs="virtio-fs",
                 virtiofsd_path=str(tmp_path / "no-virtiofsd"))
    with pytest.raises(VirtiofsdError, match="virtiofsd not found"):
        await start_vm(cfg, files["state"], files["shared"], cache_dir=files["cache"])
    assert_nothing_left(files["state"])


async def test_virtiofsd_that_dies(tmp_path, files):
    bad = tmp_path / "bad-virtiofsd"
    bad.write_text("#!/bin/sh\necho 'virtiofsd: shared dir is gone' >&2\nexit 2\n")
    bad.chmod(0o755)
    cfg = config(tmp_path, files, shared_fs="virtio-fs", virtiofsd_path=str(bad))
    # with the default floor the probe's failures refuse the pod before anything starts
    with pytest.raises(ConfinementError, match="shared dir is gone"):
        await start_vm(cfg, files["state"], files["shared"], cache_dir=files["cache"])
    assert_nothing_left(files["state"])
    cfg.confinement = ConfinementFloor(virtiofsd_sandbox="none", virtiofsd_seccomp="none")
    with pytest.raises(VirtiofsdError) as err:
        await start_vm(cfg, files["state"], files["shared"], cache_dir=files["cache"])
    assert err.value.exit_code == 2 and "shared dir is gone" in str(err.value)
    assert_nothing_left(files["state"])


async def test_missing_kernel_is_named(tmp_path, files):
    cfg = config(tmp_path, files)
    cfg.kernel = str(tmp_path / "no-such-vmlinuz")
    with pytest.raises(VMStartError, match=r"guest kernel not found: .*no-such-vmlinuz"):
        await start_vm(cfg, files["state"], files["shared"], cache_dir=files["cache"])


async def test_state_dir_in_use_and_stale_sockets(tmp_path, files):
    files["state"].mkdir()
    (files["state"] / "qmp.sock").write_text("stale")
    vm = await start_vm(config(tmp_path, files), files["state"], files["shared"],
                        cache_dir=files["cache"])
    try:
        with pytest.raises(VMStartError, match="already has a running VM"):
            await start_vm(config(tmp_path, files), files["state"], files["shared"],
                           cache_dir=files["cache"])
        assert vm.running and (await vm.agent.check()).status == 1
    finally:
        await vm.stop()


async def test_kill_from_state_after_a_shim_crash(tmp_path, files):
    vm = await start_vm(config(tmp_path, files), files["state"], files["shared"],
                        cache_dir=files["cache"])
    done = await asyncio.to_thread(kill_from_state, files["state"])
    assert f"qemu pid {vm.pid}: terminated" in done
    assert await asyncio.wait_for(vm.wait_exited(), 5) == -signal.SIGTERM
    assert_nothing_left(files["state"], vm.pid)
    assert kill_from_state(files["state"]) == []
    await vm.stop()


# --------------------------------------------------------------------------- hybrid vsock
FAKE_HVSOCK = ROOT / "tests" / "fake_hvsock.py"


def hvsock_config(tmp_path: Path, files: dict[str, Path], daemon_mode: str = "ok",
                  mode: str = "ok", **kw) -> VMConfig:
    daemon = tmp_path / f"vhost-device-vsock-{daemon_mode}"
    daemon.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_HVSOCK}" {daemon_mode} "$@"\n')
    daemon.chmod(0o755)
    return config(tmp_path, files, mode, agent_transport="hvsock",
                  vhost_vsock_daemon=str(daemon), **kw)


@pytest.fixture
def unconfined(monkeypatch):
    """The fake daemon runs as it is (the unshare + setpriv wrapper is tested apart)."""
    from shim.vmm import vhost_vsock

    monkeypatch.setattr(vhost_vsock, "confined", lambda argv: argv)


def test_the_daemon_runs_confined():
    from shim.vmm.vhost_vsock import confined, daemon_argv

    argv = daemon_argv("/d", Path("/s/vuvsock.sock"), Path("/s/hvsock.sock"))
    assert argv == ["/d", "--guest-cid=3", "--socket=/s/vuvsock.sock",
                    "--uds-path=/s/hvsock.sock"]
    wrapped = confined(argv)
    assert wrapped[0].endswith("unshare") and wrapped[1:3] == ["--net", "--"]
    assert wrapped[3].endswith("setpriv")
    assert {"--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"} <= set(wrapped)
    assert wrapped[-len(argv):] == argv


async def test_hybrid_vsock_start_check_stop(tmp_path, files, unconfined):
    vm = await start_vm(hvsock_config(tmp_path, files), files["state"], files["shared"],
                        cache_dir=files["cache"])
    daemon = vm.vhost_vsock
    try:
        assert daemon is not None and vm.channel == "hvsock"
        record = json.loads((files["state"] / "vm.json").read_text())
        assert record["processes"]["vhost-vsock"]["pid"] == daemon.pid
        assert record["agent"]["address"] == f"hvsock://{files['state']}/hvsock.sock:1024"
        assert f"--uds-path={files['state']}/hvsock.sock" in procs.cmdline(daemon.pid)
        assert (await vm.agent.check()).status == 1
        assert "vhost_vsock_ready" in vm.timings and "port_open" not in vm.timings
        assert vm.timings["qmp_ready"] < vm.timings["vsock_listening"] < vm.timings["agent_ready"]
    finally:
        await vm.stop()
    assert_nothing_left(files["state"], vm.pid, daemon.pid)


async def test_a_hybrid_vsock_daemon_whose_worker_died_fails_the_start_at_once(
        tmp_path, files, unconfined):
    """vhost-device-vsock's process outlives its panicked worker thread, and then never
    answers: the start fails on the first unanswered dial, saying so, not at its deadline."""
    t0 = time.monotonic()
    with pytest.raises(VMStartError, match="worker thread died") as raised:
        await start_vm(hvsock_config(tmp_path, files, "worker-panics"), files["state"],
                       files["shared"], cache_dir=files["cache"], timeout=60)
    assert "vring_worker' panicked" in str(raised.value)
    assert time.monotonic() - t0 < 20  # one Check deadline or two, not the start's 60 s
    assert_nothing_left(files["state"])


async def test_a_stream_the_guest_never_serves_is_dialled_again(tmp_path, files, unconfined):
    vm = await start_vm(hvsock_config(tmp_path, files, "stall-first"), files["state"],
                        files["shared"], cache_dir=files["cache"])
    try:
        assert (await vm.agent.check()).status == 1
        assert 1.0 <= vm.timings["agent_ready"] < 5.0  # one Check's deadline, then a new stream
    finally:
        await vm.stop()


@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_a_daemon_start_that_times_out_or_is_cancelled_leaves_no_daemon(
        tmp_path, unconfined, how):
    from shim.vmm import vhost_vsock

    mute = tmp_path / "mute-daemon"  # never makes its sockets
    mute.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nexec sleep 60\n")
    mute.chmod(0o755)
    start = vhost_vsock.start(str(mute), tmp_path / "v.sock", tmp_path / "h.sock",
                              log_path=tmp_path / "log", timeout=0.5)
    if how == "timeout":
        with pytest.raises(VhostVsockError, match="did not create"):
            await start
    else:
        task = asyncio.ensure_future(start)
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    pid = int((tmp_path / "pid").read_text())
    assert not procs.is_running(pid, None)


async def test_a_missing_daemon_starts_nothing(tmp_path, files):
    cfg = hvsock_config(tmp_path, files)
    cfg.vhost_vsock_daemon = str(tmp_path / "none")
    with pytest.raises(VhostVsockError, match="pykata-image host-vhost-vsock"):
        await start_vm(cfg, files["state"], files["shared"], cache_dir=files["cache"])
    assert_nothing_left(files["state"])


async def test_a_daemon_that_fails_at_start(tmp_path, files, unconfined):
    cfg = hvsock_config(tmp_path, files, "exit", shared_fs="virtio-fs",
                        virtiofsd_path=wrapper(tmp_path, "virtiofsd", "--fake-virtiofsd"))
    cfg.confinement = ConfinementFloor(virtiofsd_sandbox="none", virtiofsd_seccomp="none")
    with pytest.raises(VhostVsockError) as err:
        await start_vm(cfg, files["state"], files["shared"], cache_dir=files["cache"])
    assert err.value.exit_code == 2 and "could not create the listener" in str(err.value)
    assert_nothing_left(files["state"])  # virtiofsd, started first, is gone too


async def test_a_daemon_that_dies_while_the_vm_starts(tmp_path, files, unconfined):
    cfg = hvsock_config(tmp_path, files, "die-after-qemu", "port-never-opens")
    with pytest.raises(VhostVsockError, match="exited with status 7"):
        await start_vm(cfg, files["state"], files["shared"], cache_dir=files["cache"])
    assert_nothing_left(files["state"])


async def test_deaths_of_qemu_or_daemon_end_both(tmp_path, files, unconfined):
    for victim in ("daemon", "qemu"):
        vm = await start_vm(hvsock_config(tmp_path, files), files["state"], files["shared"],
                            cache_dir=files["cache"])
        daemon = vm.vhost_vsock
        os.kill(daemon.pid if victim == "daemon" else vm.pid, signal.SIGKILL)
        why = await asyncio.wait_for(vm.wait_death(), 10)
        expect = "vhost-device-vsock" if victim == "daemon" else "QEMU"
        assert why is not None and why.startswith(expect), why
        await vm.stop()
        assert_nothing_left(files["state"], vm.pid, daemon.pid)


async def test_kill_from_state_ends_the_daemon(tmp_path, files, unconfined):
    vm = await start_vm(hvsock_config(tmp_path, files), files["state"], files["shared"],
                        cache_dir=files["cache"])
    daemon = vm.vhost_vsock
    done = await asyncio.to_thread(kill_from_state, files["state"])  # the `delete` path
    assert f"vhost-vsock pid {daemon.pid}: terminated" in done
    assert {"removed hvsock.sock", "removed vuvsock.sock"} <= set(done)
    assert_nothing_left(files["state"], vm.pid, daemon.pid)
    await vm.stop()


async def test_hybrid_vsock_is_dialled_once_the_console_says_the_agent_listens(tmp_path):
    """The first dial waits for the agent's notice on the console, read as it grows (the
    notice may arrive in pieces); without it the dialing starts after the limit."""
    from types import SimpleNamespace

    from shim.vmm import vm as vm_module

    console = tmp_path / "console.log"
    st = SimpleNamespace(paths=SimpleNamespace(console_log=console, state_dir=tmp_path))

    async def guest() -> None:
        await asyncio.sleep(0.1)
        console.write_bytes(b"kernel noise\n" * 1000 + b"12:00:00.000 agent[1] INFO agent.chan")
        await asyncio.sleep(0.1)
        with console.open("ab") as out:
            out.write(b"nel: listening on vso")
        await asyncio.sleep(0.1)
        with console.open("ab") as out:
            out.write(b"ck://1024\n")

    writer = asyncio.ensure_future(guest())
    t0 = time.monotonic()
    assert await vm_module._wait_listening(st, poll=0.01, limit=10)
    assert time.monotonic() - t0 >= 0.3  # not before the notice was whole
    await writer
    console.write_bytes(b"a guest that never says it\n")
    t0 = time.monotonic()
    assert not await vm_module._wait_listening(st, poll=0.01, limit=0.3)
    assert time.monotonic() - t0 < 5

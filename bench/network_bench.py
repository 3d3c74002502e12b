#!/usr/bin/env python3
"""Pod network figures: TCP throughput from the node netns into the container and TCP
round-trip latency, for a pykata VM (veth -> tc redirect -> tap -> QEMU, TCG here) next
to a runc container in the same kind of netns. The ratio is the figure to watch.

Each runtime gets a fresh pair of test-made namespaces (node side, pod side, a veth,
198.18.0.0/24, no route out), deleted afterwards. Inside the container busybox nc
serves an echo port (cat) and a sink port (dd to /dev/null); the client runs in the
node netns. Traffic and time are bounded (--bytes and --seconds per run, --repeat runs,
--pings round trips).

    python3 bench/network_bench.py [--bytes 64M] [--seconds 8] [--pings 200]
        [--runtimes pykata,runc] [--mtu 1500] [--json]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ECHO_PORT, SINK_PORT = 5001, 5002
SERVER = (f"nc -ll -p {ECHO_PORT} -e cat & "
          f"exec nc -ll -p {SINK_PORT} -e dd of=/dev/null bs=65536")
RUNTIMES = {"pykata": "io.containerd.pykata.v2", "runc": "io.containerd.runc.v2"}
READY_TIMEOUT = 180.0
MESSAGE = 64  # bytes per round trip
CHUNK = 256 * 1024


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].upper() in units else int(text)


# -- client side (runs inside the node netns: `nsenter --net=... python3 this --client`) --
def _connect(ip: str, port: int, deadline: float) -> socket.socket:
    while True:
        try:
            sock = socket.create_connection((ip, port), timeout=5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _rtt(ip: str, pings: int, seconds: float) -> dict[str, float]:
    with _connect(ip, ECHO_PORT, time.monotonic() + READY_TIMEOUT) as sock:
        sock.settimeout(30)
        payload = b"x" * MESSAGE
        samples = []
        stop = time.monotonic() + seconds
        for i in range(pings + 10):
            t0 = time.perf_counter()
            sock.sendall(payload)
            got = 0
            while got < MESSAGE:
                data = sock.recv(MESSAGE - got)
                if not data:
                    raise ConnectionError("echo server closed the connection")
                got += len(data)
            if i >= 10:  # the first ones warm up (TCG translates fresh code)
                samples.append(time.perf_counter() - t0)
            if time.monotonic() > stop:
                break
    samples.sort()
    return {
        "rtt_samples": len(samples),
        "rtt_median_us": round(statistics.median(samples) * 1e6, 1),
        "rtt_p90_us": round(samples[int(len(samples) * 0.9)] * 1e6, 1),
    }


def _throughput(ip: str, total: int, seconds: float) -> dict[str, float]:
    with _connect(ip, SINK_PORT, time.monotonic() + READY_TIMEOUT) as sock:
        sock.settimeout(60)
        chunk = b"\0" * CHUNK
        sent = 0
        t0 = time.monotonic()
        while sent < total and time.monotonic() - t0 < seconds:
            sock.sendall(chunk)
            sent += len(chunk)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):  # the sink closes once it has read everything
            pass
        elapsed = time.monotonic() - t0
    return {"bytes": sent, "seconds": round(elapsed, 3),
            "mbit_per_s": round(sent * 8 / elapsed / 1e6, 1)}


def client(ip: str, total: int, seconds: float, pings: int, repeat: int) -> dict[str, object]:
    result: dict[str, object] = dict(_rtt(ip, pings, seconds))
    runs = [_throughput(ip, total, seconds) for _ in range(repeat)]
    best = sorted(runs, key=lambda r: r["mbit_per_s"])[len(runs) // 2]  # the median run
    result.update(best)
    result["mbit_per_s_runs"] = [r["mbit_per_s"] for r in runs]
    return result


# -- driver -------------------------------------------------------------------------------
def measure(cd, image: str, runtime: str, args: argparse.Namespace) -> dict[str, object]:
    from integration.test_network_env import NetnsPair

    cid = f"pknb-{runtime}-{uuid.uuid4().hex[:6]}"
    with NetnsPair() as pair:
        veth = pair.add_veth(mtu=args.mtu, gateway=True)
        argv = cd.ctr_argv("run", "--runtime", RUNTIMES[runtime], "--rm", "--with-ns",
                           f"network:{pair.pod_path}", image, cid, "sh", "-c", SERVER)
        t0 = time.monotonic()
        run = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
        try:
            probe = pair.in_node(
                sys.executable, str(Path(__file__).resolve()), "--client", veth.pod_ip,
                "--bytes", str(args.bytes), "--seconds", str(args.seconds),
                "--pings", str(args.pings), "--repeat", str(args.repeat),
                timeout=READY_TIMEOUT + (2 + args.repeat) * args.seconds + 60)
            if probe.returncode != 0:
                raise RuntimeError(f"{runtime} client failed: {probe.stderr.strip()}")
            result = json.loads(probe.stdout)
            result["wall_seconds"] = round(time.monotonic() - t0, 1)
        finally:
            cd.ctr("task", "kill", "-s", "KILL", cid)
            try:
                run.wait(timeout=120)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()
            cd.ctr("task", "delete", "--force", cid, timeout=120)
            cd.ctr("container", "delete", cid)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=_size, default=_size("512M"),
                        help="most bytes to send in one throughput run")
    parser.add_argument("--repeat", type=int, default=3,
                        help="throughput runs (the median one is reported)")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="time cap for each of the two figures")
    parser.add_argument("--pings", type=int, default=200, help="round trips to time")
    parser.add_argument("--runtimes", default="pykata,runc")
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--client", metavar="IP", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        print(json.dumps(client(args.client, args.bytes, args.seconds, args.pings,
                                args.repeat)))
        return 0

    from integration.containerd_env import PrivateContainerd, import_busybox

    runtimes = [r for r in args.runtimes.split(",") if r]
    results: dict[str, dict[str, object]] = {}
    with PrivateContainerd() as cd:
        image = import_busybox(cd)
        for runtime in runtimes:
            results[runtime] = measure(cd, image, runtime, args)
            if not args.json:
                r = results[runtime]
                print(f"{runtime:>7}: {r['mbit_per_s']:>8} Mbit/s (median of "
                      f"{r['mbit_per_s_runs']}, {r['bytes'] >> 20} MiB in {r['seconds']} s), "
                      f"TCP RTT median "
                      f"{r['rtt_median_us']} us, p90 {r['rtt_p90_us']} us", flush=True)
    ratio = {}
    if "pykata" in results and "runc" in results:
        vm, base = results["pykata"], results["runc"]
        ratio = {
            "throughput_pykata_over_runc": round(vm["mbit_per_s"] / base["mbit_per_s"], 3),
            "rtt_pykata_over_runc": round(vm["rtt_median_us"] / base["rtt_median_us"], 1),
        }
    if args.json:
        print(json.dumps({"results": results, "ratio": ratio, "options": {
            k: v for k, v in vars(args).items() if k != "client"}}, indent=2))
    elif ratio:
        print(f"\npykata/runc: throughput x{ratio['throughput_pykata_over_runc']}, "
              f"round trip x{ratio['rtt_pykata_over_runc']} (MTU {args.mtu}; pykata under "
              "the accelerator the shim chose, TCG on these machines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

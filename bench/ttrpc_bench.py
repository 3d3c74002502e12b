#!/usr/bin/env python3
"""ttrpc unary round trips over a Unix socket: latency (p50, p99) and calls/s.

Pairs measured (server in its own process, client in this one or in Go):
  python client -> python server, and, when Go is installed (bench/gottrpc),
  go client -> python server, python client -> go server, go client -> go server.
Each with 1 and 64 concurrent callers on one connection, 100-byte and 1 MiB payloads.

    python3 bench/ttrpc_bench.py [--seconds 2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVICE = "pykata.test.Echo"
SIZES = {"100B": 100, "1MiB": 1 << 20}
CALLERS = (1, 64)


def echo_descriptor():
    """The Echo service (BytesValue in and out), built at run time."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    pool = descriptor_pool.Default()
    proto = descriptor_pb2.FileDescriptorProto(
        name="pykata_bench/echo.proto",
        package="pykata.test",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    proto.service.add(name="Echo").method.add(
        name="Echo",
        input_type=".google.protobuf.BytesValue",
        output_type=".google.protobuf.BytesValue",
    )
    from google.protobuf import wrappers_pb2  # noqa: F401  (registers the dependency)

    pool.Add(proto)
    return pool.FindServiceByName(SERVICE)


def payload(size: int) -> bytes:
    """A BytesValue carrying `size` bytes: parses on both servers."""
    from google.protobuf import wrappers_pb2

    return wrappers_pb2.BytesValue(value=b"\x5a" * size).SerializeToString()


# -- the Python server (a child process) --------------------------------------
async def serve(path: str) -> None:
    import ttrpc

    class Echo:
        async def Echo(self, request, context):
            return request

    server = ttrpc.Server()
    server.register(echo_descriptor(), Echo())
    await server.serve_unix(path)
    print("READY", flush=True)
    await asyncio.Event().wait()


def start_server(argv: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "READY":
        proc.kill()
        raise SystemExit(f"server did not start: {argv} printed {line!r}")
    return proc


# -- the Python client ----------------------------------------------------------
async def python_client(path: str, data: bytes, callers: int, seconds: float) -> dict:
    import ttrpc

    client = await ttrpc.Client.connect(path)
    latencies: list[float] = []
    errors = 0

    async def caller(deadline: float, record: bool) -> None:
        nonlocal errors
        clock = time.perf_counter
        while clock() < deadline:
            start = clock()
            try:
                await client.call(SERVICE, "Echo", data)
            except ttrpc.TTRPCError:
                errors += 1
                continue
            if record:
                latencies.append(clock() - start)

    warm = time.perf_counter() + min(0.3, seconds / 4)
    await asyncio.gather(*(caller(warm, False) for _ in range(callers)))
    begin = time.perf_counter()
    await asyncio.gather(*(caller(begin + seconds, True) for _ in range(callers)))
    elapsed = time.perf_counter() - begin
    await client.close()
    return summarize(latencies, elapsed, errors)


def summarize(latencies: list[float], elapsed: float, errors: int) -> dict:
    latencies.sort()
    count = len(latencies)
    return {
        "calls": count,
        "calls_per_s": count / elapsed if elapsed else 0.0,
        "p50_us": statistics.median(latencies) * 1e6 if count else 0.0,
        "p99_us": latencies[min(count - 1, int(count * 0.99))] * 1e6 if count else 0.0,
        "errors": errors,
    }


def go_client(binary: Path, path: str, data: bytes, callers: int, seconds: float) -> dict:
    with tempfile.NamedTemporaryFile() as payload_file:
        payload_file.write(data)
        payload_file.flush()
        out = subprocess.run(
            [
                str(binary),
                "bench",
                "-socket",
                path,
                "-service",
                SERVICE,
                "-method",
                "Echo",
                "-payload-file",
                payload_file.name,
                "-concurrency",
                str(callers),
                "-duration-ms",
                str(int(seconds * 1000)),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {k: result[k] for k in ("calls", "calls_per_s", "p50_us", "p99_us", "errors")}


def find_gottrpc() -> Path | None:
    if shutil.which("go") is None:
        return None
    try:
        from bench.gottrpc.build import build_gottrpc

        return build_gottrpc()
    except Exception as exc:  # the Go peer is optional for this benchmark
        print(f"(go peer unavailable: {exc})", file=sys.stderr)
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measured time per case")
    parser.add_argument("--json", action="store_true", help="print JSON lines only")
    parser.add_argument("--serve", metavar="PATH", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        asyncio.run(serve(options.serve))
        return 0

    gottrpc = find_gottrpc()
    tmp = Path(tempfile.mkdtemp(prefix="ttrpc-bench-"))
    servers = {
        "python": [sys.executable, __file__, "--serve", str(tmp / "py.sock")],
    }
    if gottrpc:
        servers["go"] = [str(gottrpc), "serve", "-socket", str(tmp / "go.sock")]
    rows = []
    try:
        for server_name, argv in servers.items():
            proc = start_server(argv)
            sock = str(tmp / ("py.sock" if server_name == "python" else "go.sock"))
            try:
                clients = ["python"] + (["go"] if gottrpc else [])
                for client_name in clients:
                    for size_name, size in SIZES.items():
                        for callers in CALLERS:
                            data = payload(size)
                            if client_name == "python":
                                result = asyncio.run(
                                    python_client(sock, data, callers, options.seconds)
                                )
                            else:
                                result = go_client(gottrpc, sock, data, callers, options.seconds)
                            row = {
                                "client": client_name,
                                "server": server_name,
                                "payload": size_name,
                                "callers": callers,
                                **result,
                            }
                            rows.append(row)
                            if options.json:
                                print(json.dumps(row), flush=True)
            finally:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    if not options.json:
        print(
            f"ttrpc unary echo over a Unix socket, {os.cpu_count()} cores, "
            f"{options.seconds:.0f} s per case"
        )
        print(
            f"{'client':>7} {'server':>7} {'payload':>8} {'callers':>7} "
            f"{'calls/s':>10} {'p50 us':>9} {'p99 us':>9} {'errors':>6}"
        )
        for r in rows:
            print(
                f"{r['client']:>7} {r['server']:>7} {r['payload']:>8} {r['callers']:>7} "
                f"{r['calls_per_s']:>10.0f} {r['p50_us']:>9.0f} {r['p99_us']:>9.0f} "
                f"{r['errors']:>6}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

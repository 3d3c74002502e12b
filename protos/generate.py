#!/usr/bin/env python3
"""Generate (or check) the *_pb2 modules from every .proto in ttrpc/ and protos/.

The generated modules are committed, so that neither the shim nor the guest
needs grpcio-tools. `--check` regenerates into a temporary folder and exits 1
when a committed module differs from what the pinned grpcio-tools produces.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_TREES = ("ttrpc", "protos")


def proto_files() -> list[str]:
    """Every .proto source, relative to the repository root (= its import path)."""
    found: list[str] = []
    for tree in PROTO_TREES:
        found += sorted(str(p.relative_to(ROOT)) for p in (ROOT / tree).rglob("*.proto"))
    return found


def generate(out_dir: Path) -> None:
    """Run protoc (from grpcio-tools) over every source into out_dir."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *proto_files(),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: see the messages above")


def generated_names(base: Path) -> set[str]:
    names: set[str] = set()
    for tree in PROTO_TREES:
        for pattern in ("*_pb2.py", "*_pb2.pyi"):
            names |= {str(p.relative_to(base)) for p in (base / tree).rglob(pattern)}
    return names


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        expected = generated_names(fresh)
        committed = generated_names(ROOT)
        stale = sorted(
            name
            for name in expected
            if name not in committed or not filecmp.cmp(fresh / name, ROOT / name, shallow=False)
        )
        orphans = sorted(committed - expected)
    for name in stale:
        print(f"stale or missing: {name}")
    for name in orphans:
        print(f"generated module without a .proto: {name}")
    if stale or orphans:
        print("run `make protos` and commit the result")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    options = parser.parse_args()
    if options.check:
        return check()
    generate(ROOT)
    # Regular packages from below the tree's top (whose own __init__.py is
    # its owner's) down to every module: setuptools' find_packages skips a
    # folder without __init__.py, and everything below it.
    for tree in PROTO_TREES:
        top = ROOT / tree
        for module in top.rglob("*_pb2.py"):
            folder = module.parent
            while folder != top:
                (folder / "__init__.py").touch()
                folder = folder.parent
    return 0


if __name__ == "__main__":
    sys.exit(main())

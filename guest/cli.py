"""``pykata-image``: build the guest image, install the host's virtiofsd."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from guest import ui
from guest.ui import BuildError


def _parser() -> argparse.ArgumentParser:
    from guest.builder import DEFAULT_OUT
    from guest.debs import DEFAULT_CACHE
    from guest.vhost_vsock import DEFAULT_DIR as VSOCK_DIR
    from guest.virtiofsd import DEFAULT_DIR

    p = argparse.ArgumentParser(prog="pykata-image", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="print every command")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="kernel + initrd + manifest.json from Debian packages")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    b.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help=f"downloaded .deb files (default {DEFAULT_CACHE})")
    b.add_argument("--force", action="store_true", help="rebuild even if up to date")
    # uncompressed: 36 MiB instead of 13.6 MiB on disk, ~0.4 s less boot under TCG
    b.add_argument("--compression", choices=("gzip", "none"), default="none")
    # pykata: our kernel from Debian's linux-source with guest/kernel-config, built once
    # (minutes) and cached in --kernel-cache; debian-cloud: Debian's cloud kernel + modules
    b.add_argument("--kernel", choices=("debian-cloud", "pykata"), default="pykata")
    b.add_argument("--kernel-cache", type=Path, default=Path("/var/cache/pykata/kernel"),
                   help="built kernels, the kernel source and its object tree")

    v = sub.add_parser("host-virtiofsd",
                       help="trixie's virtiofsd with its own glibc, and a wrapper script")
    v.add_argument("--out", type=Path, default=DEFAULT_DIR, help=f"default {DEFAULT_DIR}")
    v.add_argument("--cache", type=Path, default=DEFAULT_CACHE)

    hv = sub.add_parser("host-vhost-vsock",
                        help="sid's vhost-device-vsock (the agent's hybrid vsock channel)")
    hv.add_argument("--out", type=Path, default=VSOCK_DIR, help=f"default {VSOCK_DIR}")
    hv.add_argument("--cache", type=Path, default=DEFAULT_CACHE)

    s = sub.add_parser("selftest", help="boot the image under QEMU with pykata.selftest=1")
    s.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the image is")
    s.add_argument("--virtiofsd", type=Path, default=DEFAULT_DIR / "virtiofsd",
                   help="virtiofsd wrapper (the share is skipped if it is missing)")
    s.add_argument("--timeout", type=float, default=120.0)
    s.add_argument("--console", action="store_true", help="print the whole console")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and of ``python3 -m guest``."""
    args = _parser().parse_args(argv)
    ui.set_verbose(args.verbose)
    try:
        if args.command == "build":
            from guest.builder import build

            build(args.out, args.cache, force=args.force, compression=args.compression,
                  kernel_flavour=args.kernel, kernel_cache=args.kernel_cache)
        elif args.command == "host-virtiofsd":
            from guest.virtiofsd import install

            install(args.out, args.cache)
        elif args.command == "host-vhost-vsock":
            from guest.vhost_vsock import install as install_vhost_vsock

            install_vhost_vsock(args.out, args.cache)
        else:
            from guest.boot import boot_selftest

            vfsd = args.virtiofsd if args.virtiofsd.exists() else None
            result = boot_selftest(args.out, virtiofsd=vfsd, timeout=args.timeout)
            if args.console:
                print(result.console)
            print(result.line or "no PYKATA-SELFTEST line on the console")
            print(f"wall: {result.wall:.2f}s to the result line")
            return 0 if result.ok else 1
    except BuildError as e:
        print(f"pykata-image: error: {e}", file=sys.stderr)
        return 1
    return 0

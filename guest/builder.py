"""``pykata-image build``: kernel + initrd + manifest.json from Debian packages."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from guest import image, initrd, kernel, kernel_build, manifest, python_runtime, rootfs, spec, ui
from guest.debs import Apt
from guest.tools import ensure_tools, tool
from guest.ui import BuildError

DEFAULT_OUT = Path("/usr/share/pykata")
INITRD_NAME = "pykata-initrd.img"
KERNEL_LINK = "vmlinuz"
#: ``--kernel``: Debian's cloud kernel (virtio as modules, loaded by /init) or our own,
#: built from Debian's kernel source with guest/kernel-config (everything built in).
KERNELS = ("debian-cloud", "pykata")
DEFAULT_KERNEL = "pykata"
#: Kernel command line knobs /init understands (documented in guest/init/init.sh).
INIT_KNOBS = {
    "pykata.selftest=1": "run the self-test, print PYKATA-SELFTEST-OK/FAIL, power off",
    "pykata.debug=1": "trace /init, kernel messages on, PYKATA_DEBUG=1 for the agent",
    "pykata.shell=1": "a root shell on the console next to the agent",
    "pykata.cgroup=v2": "mount only cgroup2 at /sys/fs/cgroup (default: v1 + unified)",
}


def _inputs(debs: dict[str, Any], compression: str,
            kernel_record: dict[str, Any]) -> tuple[dict[str, Any], list[Path]]:
    google = python_runtime.protobuf_source()
    repo = python_runtime.repo_root()
    trees = [Path(__file__).resolve().parent]
    trees += [repo / n for n in spec.REPO_PACKAGES if (repo / n).is_dir()]
    trees += [google / "protobuf", google / "_upb"]
    inputs = {
        "format": manifest.FORMAT,
        "compression": compression,
        "kernel": kernel_record,
        "debs": {n: [d.version, d.sha256] for n, d in sorted(debs.items())},
    }
    return inputs, trees


def _install_kernel(data: bytes, out: Path, release: str, config: str | None = None) -> Path:
    """vmlinuz-<release> (written only if different), its config-<release> when known,
    and the vmlinuz symlink."""
    dest = out / f"vmlinuz-{release}"
    manifest.write_if_changed(dest, data)
    for old in out.glob("config-*"):
        if old.name != f"config-{release}" or config is None:
            old.unlink()
    if config is not None:
        manifest.write_if_changed(out / f"config-{release}", config.encode())
    link = out / KERNEL_LINK
    if not (link.is_symlink() and os.readlink(link) == dest.name):
        tmp = out / f".{KERNEL_LINK}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(dest.name)
        os.replace(tmp, link)
    for old in out.glob("vmlinuz-*"):
        if old != dest:
            old.unlink()
    return dest


def _verify_cpio(raw: bytes) -> int:
    """List the archive with cpio(1) as an independent check; returns its entry count."""
    r = subprocess.run([tool("cpio"), "-it", "--quiet"], input=raw, capture_output=True,
                       check=False)
    names = r.stdout.decode().split()
    if r.returncode != 0 or "init" not in names:
        raise BuildError(f"cpio -t rejects the initrd: {r.stderr.decode().strip()}")
    return len(names)


def _summary(out: Path, m: dict[str, Any]) -> None:
    flavour = m["kernel"].get("flavour", "debian-cloud")
    ui.info(f"kernel  {out / m['kernel']['file']}  {ui.size(m['kernel']['size'])} ({flavour})")
    ui.info(f"initrd  {out / m['initrd']['file']}  {ui.size(m['initrd']['size'])} "
            f"({ui.size(m['initrd']['uncompressed_size'])} unpacked)")
    ui.info(f"modules {' '.join(m['modules'])}")
    if "image" in m:
        ui.info(f"image   {out / m['image']['file']}  {ui.size(m['image']['size'])} "
                f"(first stage {out / m['image_initrd']['file']})")


def _kernel_facts(kpkg: str, own: kernel_build.KernelBuild | None) -> dict[str, Any]:
    """What the manifest says about where the kernel came from."""
    if own is None:
        return {"flavour": "debian-cloud", "package": kpkg}
    return {"flavour": "pykata", "package": own.source.split()[0],
            "source_version": own.source.split()[-1], "config_key": own.key,
            "config": f"config-{own.release}", "build_seconds": own.seconds}


def build(out: Path = DEFAULT_OUT, cache: Path | None = None, force: bool = False,
          compression: str = "none", kernel_flavour: str = DEFAULT_KERNEL,
          kernel_cache: Path = kernel_build.DEFAULT_CACHE) -> dict[str, Any]:
    """Build (or confirm up to date) the guest assets in ``out``; returns the manifest.

    ``kernel_flavour``: ``debian-cloud`` (Debian's cloud kernel and its modules) or
    ``pykata`` (our kernel, built once into ``kernel_cache``; no modules at all)."""
    from guest.debs import DEFAULT_CACHE

    if kernel_flavour not in KERNELS:
        raise BuildError(f"--kernel must be one of {', '.join(KERNELS)}, not {kernel_flavour!r}")
    ensure_tools()
    apt = Apt(cache or DEFAULT_CACHE)
    ui.step("resolving Debian packages")
    own = kernel_flavour == "pykata"
    kpkg = "" if own else kernel.kernel_package(apt, spec.KERNEL_META_PACKAGE)
    names = [*([kpkg] if kpkg else []), *spec.PROGRAM_PACKAGES, *spec.PYTHON_PACKAGES,
             *spec.LIBRARY_PACKAGES]
    debs = apt.resolve(names)
    if own:
        src = kernel_build.source_package(apt)
        kernel_record = {"flavour": kernel_flavour, "source": [src.name, src.version],
                         "config_key": kernel_build.cache_key(src, kernel_build.load_fragments())}
    else:
        kernel_record = {"flavour": kernel_flavour, "package": kpkg}
    inputs, trees = _inputs(debs, compression, kernel_record)
    fp = manifest.fingerprint(inputs, trees)
    old = manifest.load(out)
    if not force and old and old.get("fingerprint") == fp and manifest.outputs_intact(out, old):
        ui.step(f"up to date in {out} (nothing changed since {old.get('built_at')})")
        _summary(out, old)
        return old

    own_kernel = kernel_build.build_kernel(apt, kernel_cache) if own else None
    ui.step("fetching packages")
    roots = apt.get(list(debs.values()))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pykata-guest-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        rootfs.base_layout(root)

        if own_kernel is not None:
            ui.step(f"kernel {own_kernel.release} (ours): everything built in, no modules")
            kernel.no_modules(root, spec.GUEST_MODULE_LIST)
            modules, on_demand, release = [], [], own_kernel.release
        else:
            ui.step(f"kernel {kpkg}: modules")
            modules, on_demand = kernel.stage_modules(
                roots[kpkg], root, list(spec.GUEST_MODULES), spec.GUEST_MODULE_LIST,
                on_demand=list(spec.ON_DEMAND_MODULES))
            release = kernel.kernel_release(roots[kpkg])
            ui.info(f"{len(modules)} modules, load order: {' '.join(modules)}")
            ui.info(f"{len(on_demand)} more loaded on demand: {' '.join(on_demand)}")

        ui.step("busybox, runc, crun, iptables")
        elfs: list[Path] = []
        for pkg, files in spec.PROGRAM_PACKAGES.items():
            if pkg == "python3.11-minimal":
                continue
            for rel in files:
                elfs.append(rootfs.install(roots[pkg] / rel, root, rel, 0o755))
        for pkg, folder, prefixes in spec.PLUGIN_TREES:
            plugins = rootfs.install_plugins(roots[pkg] / folder, root, folder, prefixes)
            ui.info(f"{len(plugins)} plugins from {pkg}:/{folder}")
            elfs += plugins
        rootfs.make_links(root, spec.PROGRAM_LINKS)
        applets = rootfs.busybox_applets(root, root / "usr/bin/busybox")
        ui.info(f"busybox: {applets} applet links")

        ui.step("python runtime")
        elfs += python_runtime.stage_stdlib(root, roots)
        pb_version, pb_elfs = python_runtime.stage_protobuf(root)
        elfs += pb_elfs
        present, our_modules = python_runtime.stage_repo_packages(root)
        python_runtime.stage_guest_scripts(root)
        ui.info(f"protobuf {pb_version}; our packages: {', '.join(present) or 'none'}")

        ui.step("shared libraries (DT_NEEDED closure)")
        index = rootfs.LibraryIndex({p: roots[p] for p in spec.LIBRARY_PACKAGES})
        elfs = [e for e in elfs if rootfs.is_elf(e)]
        libs = rootfs.copy_libraries(root, index, elfs, spec.DLOPEN_LIBRARIES)
        ui.info(f"{len(libs)} libraries: {' '.join(sorted(libs))}")

        ui.step("compiling .pyc with the guest interpreter, checking imports")
        python_runtime.compile_all(root)
        check = python_runtime.check_python(root, our_modules)

        ui.step(f"initrd ({compression} cpio)")
        raw = initrd.pack(initrd.tree_entries(root))
        entries, raw_size = _verify_cpio(raw), len(raw)
        data = initrd.compress(raw, compression)
        changed = manifest.write_if_changed(out / INITRD_NAME, data)
        ui.info(f"{entries} entries, {ui.size(raw_size)} -> {ui.size(len(data))}"
                + ("" if changed else " (unchanged)"))
        if own_kernel is not None:
            kdata = own_kernel.vmlinuz.read_bytes()
            kfile = _install_kernel(kdata, out, release, own_kernel.config.read_text())
        else:
            kdata = kernel.vmlinuz(roots[kpkg]).read_bytes()
            kfile = _install_kernel(kdata, out, release)

        ui.step("guest image (ext4 for virtio-pmem, DAX) and its first-stage initrd")
        image_size = image.build_image(root, out / image.IMAGE_NAME)
        stage1 = image.build_stage1(roots[kpkg] if kpkg else None, root / "usr/bin/busybox",
                                    Path(__file__).resolve().parent / "init" / "stage1.sh")
        manifest.write_if_changed(out / image.IMAGE_INITRD_NAME, stage1)
        ui.info(f"image {ui.size(image_size)}, first-stage initrd {ui.size(len(stage1))}")

    m: dict[str, Any] = {
        "format": manifest.FORMAT,
        "fingerprint": fp,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": {**manifest.file_record(kfile, kdata), "release": release,
                   **_kernel_facts(kpkg, own_kernel)},
        "initrd": {**manifest.file_record(out / INITRD_NAME, data), "compression": compression,
                   "uncompressed_size": raw_size, "entries": entries},
        "image": manifest.file_record(out / image.IMAGE_NAME),
        "image_initrd": manifest.file_record(out / image.IMAGE_INITRD_NAME, stage1),
        "packages": {n: d.version for n, d in sorted(debs.items())},
        "modules": modules,
        "modules_on_demand": on_demand,
        "libraries": dict(sorted(libs.items())),
        "python": {"version": check.version, "pyc_magic": check.magic,
                   "stdlib_sourceless": spec.STDLIB_SOURCELESS,
                   "pythonpath": "/" + spec.GUEST_PYLIB, "protobuf": pb_version,
                   "protobuf_impl": check.protobuf_impl},
        "repo_packages": present,
        "init_knobs": INIT_KNOBS,
    }
    manifest.write(out, m)
    ui.step(f"done: {out}")
    _summary(out, m)
    return m

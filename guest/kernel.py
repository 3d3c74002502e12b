"""The guest kernel: pick the package, copy vmlinuz, stage a depmod'ed module subset."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from guest import ui
from guest.debs import Apt, depends_names
from guest.tools import tool
from guest.ui import BuildError

_KO = re.compile(r"\.ko(\.(xz|gz|zst))?$")


def kernel_package(apt: Apt, meta: str) -> str:
    """Versioned kernel package the meta package depends on (e.g. linux-image-6.1.0-56-…)."""
    deps = depends_names(apt.resolve([meta])[meta].depends)
    for name in deps:
        if name.startswith("linux-image-") and name != meta:
            return name
    raise BuildError(f"{meta} depends on no linux-image-* package (Depends: {deps})")


def kernel_release(root: Path) -> str:
    """The kernel release (``uname -r``) of an unpacked kernel package."""
    releases = sorted(p.name for p in (root / "lib/modules").iterdir() if p.is_dir())
    if len(releases) != 1:
        raise BuildError(f"expected one kernel in {root}/lib/modules, found {releases}")
    return releases[0]


def module_name(path: str) -> str:
    """Module name of a .ko path: basename without suffix, '-' as '_'."""
    return _KO.sub("", path.rsplit("/", 1)[-1]).replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep text -> {module name: (path, [paths of the modules it needs])}."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[module_name(path)] = (path.strip(), rest.split())
    return deps


def load_order(deps: dict[str, tuple[str, list[str]]], wanted: list[str]) -> list[str]:
    """Paths of ``wanted`` and everything they need, each after its dependencies."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "busy":
            raise BuildError("module dependency cycle: " + " -> ".join((*chain, name)))
        if name not in deps:
            via = f" (needed by {chain[-1]})" if chain else ""
            raise BuildError(f"kernel module {name}{via} is not in modules.dep")
        state[name] = "busy"
        path, needs = deps[name]
        for dep in needs:
            visit(module_name(dep), (*chain, name))
        state[name] = "done"
        order.append(path)

    for name in wanted:
        visit(name.replace("-", "_"), ())
    return order


def depmod(base: Path, release: str) -> None:
    """Run ``depmod -b base release``."""
    r = subprocess.run([tool("depmod"), "-b", str(base), release],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise BuildError(f"depmod -b {base} {release} failed: {r.stderr.strip()}")


def stage_modules(kroot: Path, staging: Path, wanted: list[str], list_file: str,
                  on_demand: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Copy ``wanted`` and ``on_demand`` modules with their dependencies, depmod,
    write the boot load list (``wanted`` only: the others wait for the kernel to
    ask for them).

    Returns the names loaded at boot in load order, and the other names shipped.
    """
    release = kernel_release(kroot)
    src = kroot / "lib/modules" / release
    if not (src / "modules.dep").exists():
        ui.info(f"depmod on the unpacked {release} tree")
        depmod(kroot, release)
    deps = parse_modules_dep((src / "modules.dep").read_text())
    order = load_order(deps, wanted)
    extra = [rel for rel in load_order(deps, on_demand or []) if rel not in order]
    dst = staging / "usr/lib/modules" / release
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    for rel in order + extra:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)
    depmod(staging, release)
    listing = staging / list_file
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("".join(f"/lib/modules/{release}/{rel}\n" for rel in order))
    return [module_name(rel) for rel in order], [module_name(rel) for rel in extra]


def no_modules(staging: Path, list_file: str) -> None:
    """The boot load list of a kernel that has everything built in: empty (and no
    modules tree: the kernel has no module support to ask /sbin/modprobe with)."""
    listing = staging / list_file
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text("")


def vmlinuz(kroot: Path) -> Path:
    """The kernel image inside an unpacked kernel package."""
    found = sorted((kroot / "boot").glob("vmlinuz-*"))
    if not found:
        raise BuildError(f"no boot/vmlinuz-* in {kroot}")
    return found[0]

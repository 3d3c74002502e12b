"""Our own guest kernel: bookworm's ``linux-source-6.1`` configured for pods.

The recipe: ``make ARCH=x86_64 tinyconfig``, the options of ``guest/kernel-config/*.conf``
written over it, ``make olddefconfig``, a check that every option the fragments asked
for survived (a missing dependency silently drops an option: VIRTIO_MEM without
COMPACTION, say), then ``make bzImage``. Everything is built in; there are no modules.

The result is cached in ``<cache>/<key>/`` (``vmlinuz``, ``config``, ``build.json``),
the key being a digest of the source package's version and sha256, the fragments'
names and contents, and the recipe below. The unpacked source
(``<cache>/src-<version>``) and the object tree (``<cache>/build-<version>``) are kept
too, so that a change of fragments rebuilds only what it touches.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from guest import ui
from guest.debs import Apt, Deb
from guest.tools import ensure_tools
from guest.ui import BuildError

SOURCE_PACKAGE = "linux-source-6.1"
FRAGMENT_DIR = Path(__file__).resolve().parent / "kernel-config"
DEFAULT_CACHE = Path("/var/cache/pykata/kernel")
#: Everything about how the kernel is made that is not a fragment; part of the key.
RECIPE: dict[str, object] = {
    "recipe": 1,
    "arch": "x86_64",
    "base": "tinyconfig",
    "then": "olddefconfig",
    "target": "bzImage",
    "image": "arch/x86/boot/bzImage",
    # reproducible: no build host, user or time baked into the image
    "env": {"KBUILD_BUILD_USER": "pykata", "KBUILD_BUILD_HOST": "pykata",
            "KBUILD_BUILD_TIMESTAMP": "Thu Jan  1 00:00:00 UTC 1970",
            "KBUILD_BUILD_VERSION": "1"},
}
#: Commands the kernel build runs -> the Debian package that has them.
BUILD_TOOLS: dict[str, str] = {
    "make": "make", "gcc": "gcc", "ld": "binutils", "flex": "flex", "bison": "bison",
    "bc": "bc", "perl": "perl", "lz4": "lz4", "xz": "xz-utils", "tar": "tar",
}
#: Headers the build needs (objtool links libelf) -> their Debian package.
BUILD_HEADERS: dict[str, str] = {"/usr/include/gelf.h": "libelf-dev"}
#: How long a cold build took on the 2-core development machines (shown before one).
COLD_BUILD_HINT = "about 5-6 minutes on 2 cores"

_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
NOT_SET = "n"


# --- config files and fragments -------------------------------------------------
def parse_config(text: str) -> dict[str, str]:
    """A .config's options: name -> value as written (``y``, ``"str"``, ``240``), and
    ``n`` for ``# CONFIG_X is not set``. Options that are absent are not set either."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if m := _SET.match(line):
            found[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            found[m.group(1)] = NOT_SET
    return found


def parse_fragment(text: str, where: str = "<fragment>") -> dict[str, str]:
    """A fragment's options, as :func:`parse_config` reads them (``CONFIG_X=n`` too).
    Any other line that is not a comment, and an option set twice, are errors."""
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = _SET.match(line) or _UNSET.match(line)
        if m is None:
            if line and not line.startswith("#"):
                raise BuildError(f"{where}:{number}: not a config line: {raw!r}")
            continue
        name = m.group(1)
        value = m.group(2) if m.re is _SET else NOT_SET
        if name in found:
            raise BuildError(f"{where}:{number}: {name} is set twice")
        found[name] = value
    return found


def load_fragments(folder: Path = FRAGMENT_DIR) -> dict[str, str]:
    """File name -> text of every ``*.conf`` in ``folder``, in name order."""
    frags = {p.name: p.read_text() for p in sorted(folder.glob("*.conf"))}
    if not frags:
        raise BuildError(f"no kernel config fragments (*.conf) in {folder}")
    return frags


def wanted_options(fragments: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Option -> (value, fragment that asks for it) over all fragments; two fragments
    asking different values of one option is an error."""
    wanted: dict[str, tuple[str, str]] = {}
    for name, text in fragments.items():
        for option, value in parse_fragment(text, name).items():
            if option in wanted and wanted[option][0] != value:
                other = wanted[option][1]
                raise BuildError(f"{option}: {other} asks {wanted[option][0]}, {name} asks {value}")
            wanted.setdefault(option, (value, name))
    return wanted


def config_line(option: str, value: str) -> str:
    return f"# {option} is not set" if value == NOT_SET else f"{option}={value}"


def merge(base: str, wanted: dict[str, tuple[str, str]]) -> str:
    """``base`` (a .config) with the wanted options written over it: lines of options
    it has are replaced in place, the others appended."""
    lines, seen = [], set()
    for line in base.splitlines():
        m = _SET.match(line.strip()) or _UNSET.match(line.strip())
        if m and m.group(1) in wanted:
            seen.add(m.group(1))
            line = config_line(m.group(1), wanted[m.group(1)][0])
        lines.append(line)
    lines += [config_line(o, v) for o, (v, _) in wanted.items() if o not in seen]
    return "\n".join(lines) + "\n"


def dropped(wanted: dict[str, tuple[str, str]], config: dict[str, str]) -> list[str]:
    """The wanted options the final config does not have as asked, one line each."""
    lost = []
    for option, (value, where) in wanted.items():
        got = config.get(option, NOT_SET)
        if got != value:
            shown = "not set" if got == NOT_SET else got
            lost.append(f"{option}={value} ({where}): olddefconfig left {shown}")
    return lost


def cache_key(source: Deb, fragments: dict[str, str], recipe: dict[str, object] = RECIPE) -> str:
    """Digest of what decides the kernel: source version and sha256, fragments, recipe."""
    document = {"source": [source.name, source.version, source.sha256],
                "fragments": fragments, "recipe": recipe}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:20]


# --- the build ----------------------------------------------------------------------
@dataclass(frozen=True)
class KernelBuild:
    """A built (or cached) kernel."""

    vmlinuz: Path
    config: Path
    release: str
    key: str
    source: str  # "linux-source-6.1 6.1.192-3"
    seconds: float  # how long the build took (when it was made)
    cached: bool  # found in the cache this time


def source_package(apt: Apt) -> Deb:
    return apt.resolve([SOURCE_PACKAGE])[SOURCE_PACKAGE]


def cached(cache: Path, key: str) -> KernelBuild | None:
    """The kernel of ``key`` in the cache, if it is complete."""
    folder = cache / key
    try:
        record = json.loads((folder / "build.json").read_text())
    except (OSError, ValueError):
        return None
    vmlinuz = folder / "vmlinuz"
    if not vmlinuz.is_file() or vmlinuz.stat().st_size != record.get("size"):
        return None
    return KernelBuild(vmlinuz, folder / "config", record["release"], key, record["source"],
                       record.get("seconds", 0.0), cached=True)


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            ui.info(f"another kernel build holds {cache}/.lock: waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _ensure_build_deps() -> None:
    ensure_tools(BUILD_TOOLS)
    missing = sorted({pkg for header, pkg in BUILD_HEADERS.items() if not Path(header).exists()})
    if missing:
        ui.step(f"installing kernel build headers: {' '.join(missing)}")
        r = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise BuildError(f"apt-get install {' '.join(missing)} failed: {r.stderr[-1500:]}")


def unpack_source(apt: Apt, deb: Deb, cache: Path) -> Path:
    """The kernel tree of the source package, untarred once into ``cache/src-<version>``."""
    dest = cache / f"src-{deb.version}"
    if (dest / ".pykata-unpacked").exists():
        return dest
    root = apt.get([deb])[deb.name]
    tarballs = sorted((root / "usr/src").glob("linux-source-*.tar.*"))
    if not tarballs:
        raise BuildError(f"no usr/src/linux-source-*.tar.* in {deb.name} {deb.version}")
    ui.info(f"untarring {tarballs[0].name}")
    tmp = cache / f".src-{deb.version}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    r = subprocess.run(["tar", "-xf", str(tarballs[0]), "-C", str(tmp)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(f"tar -xf {tarballs[0]} failed: {r.stderr.strip()[-1000:]}")
    tops = [p for p in tmp.iterdir()]
    if len(tops) != 1 or not (tops[0] / "Makefile").is_file():
        raise BuildError(f"unexpected layout in {tarballs[0].name}: {[p.name for p in tops]}")
    (tops[0] / ".pykata-unpacked").write_text(f"{deb.name} {deb.version}\n")
    shutil.rmtree(dest, ignore_errors=True)
    tops[0].rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _make(src: Path, obj: Path, log: Path, *targets: str, jobs: int = 1) -> str:
    """``nice make`` in the source tree with the object tree ``obj``; output to ``log``."""
    env = {**os.environ, **RECIPE["env"]}  # type: ignore[dict-item]
    cmd = ["nice", "-n", "10", "make", "-C", str(src), f"O={obj}", f"ARCH={RECIPE['arch']}",
           f"-j{jobs}", "-s", *targets]
    ui.detail("$ " + " ".join(cmd))
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=out, text=True,
                           check=False)
        out.write(r.stdout)
    if r.returncode != 0:
        tail = log.read_text()[-3000:]
        raise BuildError(f"make {' '.join(targets)} failed (log: {log}):\n{tail}")
    return r.stdout


def configure(src: Path, obj: Path, wanted: dict[str, tuple[str, str]], log: Path) -> str:
    """tinyconfig, the fragments over it, olddefconfig; returns the final .config text.
    Fails listing every wanted option that did not survive."""
    _make(src, obj, log, str(RECIPE["base"]))
    config = obj / ".config"
    config.write_text(merge(config.read_text(), wanted))
    _make(src, obj, log, str(RECIPE["then"]))
    final = config.read_text()
    lost = dropped(wanted, parse_config(final))
    if lost:
        raise BuildError(
            f"{len(lost)} kernel option(s) asked for by guest/kernel-config did not survive "
            "olddefconfig (a dependency is missing or the option does not exist in "
            f"this kernel):\n  " + "\n  ".join(lost))
    return final


def build_kernel(apt: Apt, cache: Path = DEFAULT_CACHE, jobs: int | None = None,
                 fragments: dict[str, str] | None = None) -> KernelBuild:
    """Our kernel for the fragments: from the cache, or built (minutes)."""
    deb = source_package(apt)
    fragments = load_fragments() if fragments is None else fragments
    wanted = wanted_options(fragments)
    key = cache_key(deb, fragments)
    hit = cached(cache, key)
    if hit is not None:
        ui.info(f"kernel {hit.release} from the cache ({cache / key})")
        return hit
    with _locked(cache):
        hit = cached(cache, key)  # built by another process while we waited
        if hit is not None:
            return hit
        _ensure_build_deps()
        started = time.monotonic()
        src = unpack_source(apt, deb, cache)
        obj = cache / f"build-{deb.version}"
        obj.mkdir(parents=True, exist_ok=True)
        log = obj / "pykata-build.log"
        log.write_text(f"pykata kernel build {key} from {deb.name} {deb.version}\n")
        ui.step(f"kernel: configuring {deb.name} {deb.version} ({len(wanted)} options "
                f"from {len(fragments)} fragments)")
        final = configure(src, obj, wanted, log)
        jobs = jobs or os.cpu_count() or 1
        ui.step(f"kernel: make -j{jobs} bzImage ({COLD_BUILD_HINT} the first time; log {log})")
        _make(src, obj, log, str(RECIPE["target"]), jobs=jobs)
        release = _make(src, obj, log, "kernelrelease").strip().splitlines()[-1]
        image = (obj / str(RECIPE["image"])).read_bytes()
        seconds = round(time.monotonic() - started, 1)
        tmp = cache / f".{key}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (tmp / "vmlinuz").write_bytes(image)
        (tmp / "config").write_text(final)
        source = f"{deb.name} {deb.version}"
        record = {"key": key, "release": release, "source": source, "size": len(image),
                  "sha256": hashlib.sha256(image).hexdigest(), "seconds": seconds,
                  "fragments": sorted(fragments), "recipe": RECIPE,
                  "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / "build.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(cache / key, ignore_errors=True)
        tmp.rename(cache / key)
        ui.info(f"kernel {release} built in {seconds:.0f} s: {ui.size(len(image))}")
        return KernelBuild(cache / key / "vmlinuz", cache / key / "config", release, key,
                           source, seconds, cached=False)

"""The guest's Python: interpreter, pruned stdlib, protobuf, our packages, .pyc files."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from guest import spec, ui
from guest.rootfs import LIBDIR, install
from guest.ui import BuildError

PYDIR = f"usr/lib/python{spec.PYTHON_VERSION}"
_DROP_DIRS = frozenset({"__pycache__", "test", "tests", "idle_test"})


def keep_stdlib(rel: str) -> bool:
    """Whether a path relative to the stdlib directory goes into the guest."""
    parts = rel.split("/")
    if any(p in _DROP_DIRS for p in parts[:-1]) or parts[-1].endswith((".pyc", ".exe")):
        return False
    if parts[0] == "lib-dynload":
        return len(parts) == 2 and parts[1].split(".")[0] not in spec.DYNLOAD_EXCLUDE
    top = parts[0].removesuffix(".py")
    return top not in spec.STDLIB_EXCLUDE and top != "sitecustomize"


def keep_package_file(rel: str, exclude: frozenset[str] = frozenset(),
                      suffixes: tuple[str, ...] = ()) -> bool:
    """Whether a file of a copied Python package goes into the guest."""
    parts = rel.split("/")
    if any(p in _DROP_DIRS or p in exclude for p in parts[:-1]):
        return False
    name = parts[-1]
    return name.endswith((".py", ".so")) and not name.endswith(suffixes)


def copy_tree(src: Path, dest: Path, keep) -> list[Path]:  # type: ignore[no-untyped-def]
    """Copy the files of ``src`` for which ``keep(relpath)`` is true; return the copies."""
    copied = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(src))
            if not keep(rel) or (path.is_symlink() and not path.exists()):
                continue
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
            os.chmod(out, 0o755 if name.endswith(".so") else 0o644)
            copied.append(out)
    return copied


def stage_stdlib(root: Path, roots: dict[str, Path]) -> list[Path]:
    """Interpreter and pruned stdlib from the Debian packages; returns the ELF files."""
    binary = roots["python3.11-minimal"] / "usr/bin/python3.11"
    install(binary, root, "usr/bin/python3.11", 0o755)
    (root / "usr/bin/python3").symlink_to("python3.11")
    elfs = [root / "usr/bin/python3.11"]
    for pkg in spec.PYTHON_PACKAGES:
        src = roots[pkg] / PYDIR
        for f in copy_tree(src, root / PYDIR, keep_stdlib):
            if f.name.endswith(".so"):
                elfs.append(f)
    return elfs


def protobuf_source() -> Path:
    """The host Python's ``google`` directory that holds protobuf and its upb extension."""
    found = importlib.util.find_spec("google.protobuf")
    if found is None or not found.submodule_search_locations:
        raise BuildError("google.protobuf is not importable by this Python (pip install protobuf)")
    return Path(next(iter(found.submodule_search_locations))).parent


def stage_protobuf(root: Path) -> tuple[str, list[Path]]:
    """Copy google.protobuf and google._upb; returns (version, ELF files)."""
    google = protobuf_source()
    dest = root / spec.GUEST_PYLIB / "google"
    elfs = []
    for sub in ("protobuf", "_upb"):
        if not (google / sub).is_dir():
            raise BuildError(f"{google / sub} missing: protobuf without its upb extension?")

        def keep(rel: str) -> bool:
            return keep_package_file(rel, spec.PROTOBUF_EXCLUDE, spec.PROTOBUF_EXCLUDE_SUFFIXES)

        elfs += [f for f in copy_tree(google / sub, dest / sub, keep) if f.suffix == ".so"]
    # A regular package (not a namespace one): no scan of every sys.path entry.
    (dest / "__init__.py").write_text("")
    version = "?"
    for line in (google / "protobuf/__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            version = line.split("=", 1)[1].strip().strip("'\"")
    return version, elfs


def repo_root() -> Path:
    """The directory that holds our packages (the repo, or site-packages when installed)."""
    return Path(__file__).resolve().parent.parent


def stage_repo_packages(root: Path) -> tuple[list[str], list[str]]:
    """Copy spec.REPO_PACKAGES (ttrpc/, protos/, pykata_common/, agent/: those that exist)
    as sources.

    Returns (packages copied, dotted names of their modules except ``__main__``).
    """
    present: list[str] = []
    modules: list[str] = []
    for name in spec.REPO_PACKAGES:
        src = repo_root() / name
        if not (src / "__init__.py").exists():
            continue

        def keep(rel: str, name: str = name) -> bool:
            return keep_package_file(rel) and f"{name}/{rel}" not in spec.REPO_HOST_ONLY

        for f in copy_tree(src, root / spec.GUEST_PYLIB / name, keep):
            rel = f.relative_to(root / spec.GUEST_PYLIB).with_suffix("")
            dotted = ".".join(rel.parts).removesuffix(".__init__")
            if f.suffix == ".py" and rel.name != "__main__":
                modules.append(dotted)
        present.append(name)
    return present, modules


def stage_guest_scripts(root: Path) -> None:
    """/init and the self-test module."""
    here = Path(__file__).resolve().parent / "init"
    install(here / "init.sh", root, "init", 0o755)
    install(here / "pykata_selftest.py", root, f"{spec.GUEST_PYLIB}/pykata_selftest.py", 0o644)


def staged_python(root: Path, *args: str, pythonpath: bool = False) -> subprocess.CompletedProcess:
    """Run the staged interpreter on this host through the staged loader and libraries."""
    env = {"PYTHONHOME": str(root / "usr"), "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8",
           "PYTHONHASHSEED": "0"}  # reproducible .pyc (set and frozenset constants)
    if pythonpath:
        env["PYTHONPATH"] = str(root / spec.GUEST_PYLIB)
    cmd = [str(root / LIBDIR / "ld-linux-x86-64.so.2"), "--inhibit-cache",
           "--library-path", str(root / LIBDIR), str(root / "usr/bin/python3.11"), "-S", "-B",
           *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)


_COMPILE = """
import compileall, os, sys, py_compile
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
stdlib, pylib, sourceless = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
ok = compileall.compile_dir(stdlib, quiet=2, legacy=sourceless, invalidation_mode=mode,
                            workers=0, ddir="/" + os.path.relpath(stdlib, sys.argv[4]))
ok &= compileall.compile_dir(pylib, quiet=2, invalidation_mode=mode, workers=0,
                             ddir="/" + os.path.relpath(pylib, sys.argv[4]))
sys.exit(0 if ok else 1)
"""


def compile_all(root: Path) -> None:
    """Compile every .py with the guest's own interpreter (so the magic matches).

    The stdlib becomes sourceless ``x.pyc`` files when spec.STDLIB_SOURCELESS.
    """
    stdlib, pylib = root / PYDIR, root / spec.GUEST_PYLIB
    r = staged_python(root, "-c", _COMPILE, str(stdlib), str(pylib),
                      "1" if spec.STDLIB_SOURCELESS else "0", str(root))
    if r.returncode != 0:
        raise BuildError(f"compileall with the guest Python failed:\n{r.stdout}{r.stderr}")
    if spec.STDLIB_SOURCELESS:
        for py in stdlib.rglob("*.py"):
            if py.with_suffix(".pyc").exists():
                py.unlink()


_CHECK = """
import importlib, importlib.util, json, sys
split = sys.argv.index("--")
for name in sys.argv[1:split]:
    importlib.import_module(name)
errors = {}
for name in sys.argv[split + 1:]:
    try:
        importlib.import_module(name)
    except Exception as e:
        errors[name] = f"{type(e).__name__}: {e}"
from google.protobuf.internal import api_implementation
print(json.dumps({"version": sys.version.split()[0],
                  "magic": importlib.util.MAGIC_NUMBER.hex(),
                  "protobuf_impl": api_implementation.Type(), "errors": errors}))
"""


@dataclass(frozen=True)
class PythonCheck:
    """What the staged interpreter reported about itself."""

    version: str
    magic: str
    protobuf_impl: str


def check_python(root: Path, optional: list[str]) -> PythonCheck:
    """Import spec.MUST_IMPORT (or fail) and ``optional`` (or warn) with the staged Python."""
    r = staged_python(root, "-c", _CHECK, *spec.MUST_IMPORT, "--", *optional, pythonpath=True)
    if r.returncode != 0:
        raise BuildError("the staged guest Python cannot import what the guest needs:\n"
                         + r.stderr.strip()[-3000:])
    data = json.loads(r.stdout.strip().splitlines()[-1])
    for name, err in data["errors"].items():
        ui.info(f"WARNING: {name} does not import in the guest Python: {err}")
    if data["protobuf_impl"] != "upb":
        raise BuildError(f"protobuf in the guest uses {data['protobuf_impl']}, not upb")
    ui.info(f"guest python {data['version']} imports OK (pyc magic {data['magic']}, "
            f"protobuf {data['protobuf_impl']})")
    return PythonCheck(data["version"], data["magic"], data["protobuf_impl"])

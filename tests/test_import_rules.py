"""The guest's packages import nothing of the host (ARCHITECTURE.md, "Where behaviour lives").

`agent/` runs in the VM and `guest/` builds what runs there: neither may import
`shim`. `pykata_common/` is shipped to both sides, so it imports only the standard
library. The source is read with `ast`, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUEST_SIDE = ("agent", "guest")
COMMON = "pykata_common"


def _sources(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    return files


def _imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level package) of every absolute import in `path`, including
    importlib.import_module("...") and __import__("...") with a literal name."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                yield node.lineno, node.module.partition(".")[0]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
            if name in ("import_module", "__import__") and literal:
                yield node.lineno, first.value.partition(".")[0]


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


@pytest.mark.parametrize("package", GUEST_SIDE)
def test_guest_side_imports_nothing_of_the_shim(package: str) -> None:
    bad = [
        f"{_where(path, line)} imports {name}"
        for path in _sources(package)
        for line, name in _imported(path)
        if name == "shim"
    ]
    assert not bad, "the guest's packages import nothing of the host:\n" + "\n".join(bad)


def test_common_package_is_standard_library_only() -> None:
    allowed = set(sys.stdlib_module_names) | {"__future__", COMMON}
    bad = [
        f"{_where(path, line)} imports {name}"
        for path in _sources(COMMON)
        for line, name in _imported(path)
        if name not in allowed
    ]
    assert not bad, f"{COMMON} is shipped to host and guest: stdlib only:\n" + "\n".join(bad)


def test_the_scan_sees_every_kind_of_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import shim.x\nfrom shim import y\nfrom . import z\n"
        "def f():\n    import importlib\n    importlib.import_module('shim.lazy')\n"
    )
    assert [name for _, name in _imported(source)] == ["shim", "shim", "importlib", "shim"]


def test_staged_guest_packages_import_on_their_own(tmp_path: Path) -> None:
    """Every module the image builder ships imports with only what the image holds:
    the staged packages, google.protobuf and the standard library (no site-packages,
    no checkout on the path)."""
    import google.protobuf

    from guest import spec
    from guest.python_runtime import stage_repo_packages

    present, modules = stage_repo_packages(tmp_path / "root")
    assert COMMON in present and "shim" not in present
    assert not any(m == "shim" or m.startswith("shim.") for m in modules)
    google_dir = tmp_path / "protobuf"
    google_dir.mkdir()
    (google_dir / "google").symlink_to(Path(google.protobuf.__file__).parent.parent)
    pylib = tmp_path / "root" / spec.GUEST_PYLIB
    code = (
        "import importlib, sys\n"
        f"sys.path[:0] = [{str(pylib)!r}, {str(google_dir)!r}]\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "print(sorted({n.partition('.')[0] for n in sys.modules} & {'shim', 'guest'}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, *modules],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"

"""Which stdlib and package files go into the guest."""

from __future__ import annotations

from guest import spec
from guest.python_runtime import keep_package_file, keep_stdlib


def test_stdlib_keeps_what_the_agent_uses() -> None:
    for rel in ["os.py", "asyncio/base_events.py", "json/__init__.py", "logging/__init__.py",
                "subprocess.py", "encodings/utf_8.py", "_sysconfigdata__x86_64-linux-gnu.py",
                "lib-dynload/_asyncio.cpython-311-x86_64-linux-gnu.so",
                "lib-dynload/_ctypes.cpython-311-x86_64-linux-gnu.so"]:
        assert keep_stdlib(rel), rel


def test_stdlib_drops_tests_tools_and_docs() -> None:
    for rel in ["test/test_os.py", "idlelib/idle.py", "tkinter/__init__.py", "ensurepip/x.whl",
                "lib2to3/main.py", "pydoc_data/topics.py", "turtledemo/x.py", "distutils/core.py",
                "unittest/case.py", "ctypes/test/test_x.py", "sqlite3/__init__.py", "ssl.py",
                "sitecustomize.py", "venv/__init__.py", "os.pyc", "__pycache__/os.cpython-311.pyc",
                "lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
                "lib-dynload/_testcapi.cpython-311-x86_64-linux-gnu.so",
                "lib-dynload/_codecs_jp.cpython-311-x86_64-linux-gnu.so"]:
        assert not keep_stdlib(rel), rel


def test_every_excluded_extension_name_is_a_plain_name() -> None:
    assert all("." not in n and "/" not in n for n in spec.DYNLOAD_EXCLUDE)
    assert spec.STDLIB_EXCLUDE.isdisjoint({"asyncio", "json", "logging", "subprocess", "socket",
                                           "encodings", "importlib", "ctypes", "email"})


def test_package_files() -> None:
    assert keep_package_file("protobuf/message.py")
    assert keep_package_file("_upb/_message.abi3.so")
    assert not keep_package_file("protobuf/__pycache__/message.cpython-311.pyc")
    assert not keep_package_file("protobuf/testdata/x.py", frozenset({"testdata"}))
    assert not keep_package_file("protobuf/internal/message_benchmark.py",
                                 suffixes=("_benchmark.py",))
    assert not keep_package_file("pb/request.proto")
    assert not keep_package_file("tests/test_x.py")


def test_repo_packages_are_copied_as_sources(tmp_path) -> None:
    from guest.python_runtime import stage_repo_packages

    present, modules = stage_repo_packages(tmp_path)
    pylib = tmp_path / spec.GUEST_PYLIB
    assert "ttrpc" in present and "protos" in present
    assert (pylib / "ttrpc/__init__.py").is_file()
    assert not (pylib / "protos/generate.py").exists()
    assert "ttrpc" in modules and "protos.generate" not in modules
    assert not any(m.endswith("__main__") for m in modules)
    assert not list(pylib.rglob("*.proto"))

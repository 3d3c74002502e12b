"""Make sure the shim runs under an interpreter that has pykata's dependencies.

containerd 1.6 looks for `containerd-shim-pykata-v2` in its own working
directory before PATH, so a containerd started in a checkout runs the
checkout's script with whatever `python3` comes first on PATH. That interpreter
may lack structlog, protobuf or pyroute2; the daemon would then die at import
with nobody to hear it. So before any action the shim checks, by a few stats
(no imports, well under a millisecond), that its dependencies are there; if
not, it re-executes itself with pykata's own interpreter, and if there is none
it fails with a message that says what to install.
"""

from __future__ import annotations

import os
import sys
from importlib.machinery import PathFinder

# Import names the daemon needs (a dotted name: the package and its subpackage).
REQUIRED_MODULES = {
    "structlog": "structlog",
    "google.protobuf": "protobuf",
    "pyroute2": "pyroute2",
    "qemu.qmp": "qemu.qmp",
}
DEFAULT_PYTHON = "/opt/pykata/venv/bin/python"
PYTHON_ENV = "PYKATA_PYTHON"
_REEXEC_ENV = "PYKATA_SHIM_REEXEC"


def _has_module(name: str) -> bool:
    top, _, sub = name.partition(".")
    spec = PathFinder.find_spec(top)
    if spec is None:
        return False
    if not sub:
        return True
    return any(os.path.exists(os.path.join(d, sub)) for d in spec.submodule_search_locations or ())


def missing_distributions() -> list[str]:
    """The PyPI names of required packages this interpreter cannot import."""
    return [dist for module, dist in REQUIRED_MODULES.items() if not _has_module(module)]


def candidate_interpreters() -> list[str]:
    """Interpreters to try, in order: $PYKATA_PYTHON, then the venv `make setup` makes."""
    found = []
    for path in (os.environ.get(PYTHON_ENV, ""), DEFAULT_PYTHON):
        if path and os.access(path, os.X_OK) and path not in found:
            found.append(path)
    return found


def problem(missing: list[str]) -> str:
    """The one-line explanation given to containerd (and so to `ctr`) and to the log."""
    tried = os.environ.get(_REEXEC_ENV)
    also = f" (re-executed from {tried})" if tried else ""
    return (
        f"the interpreter {sys.executable}{also} running {os.path.abspath(sys.argv[0])} "
        f"lacks pykata's dependencies: {', '.join(missing)}. Install pykata with `make setup` "
        f"(creates {DEFAULT_PYTHON} and puts containerd-shim-pykata-v2 on PATH), "
        f"or set {PYTHON_ENV} to a Python that has them"
    )


def ensure_dependencies() -> str | None:
    """Return None when this interpreter can run the shim; else re-exec or return why not.

    Re-executes (does not return) when another interpreter is available and this
    process was not already re-executed once.
    """
    missing = missing_distributions()
    if not missing:
        os.environ.pop(_REEXEC_ENV, None)  # keep it out of the daemon's children
        return None
    if not os.environ.get(_REEXEC_ENV):
        for python in candidate_interpreters():
            if python == sys.executable:
                continue
            os.environ[_REEXEC_ENV] = sys.executable
            try:
                os.execv(python, [python, os.path.abspath(sys.argv[0]), *sys.argv[1:]])
            except OSError:
                continue
    return problem(missing)

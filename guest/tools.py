"""Host build tools: find them, install the missing ones with apt-get."""

from __future__ import annotations

import os
import shutil
import subprocess

from guest import ui
from guest.spec import HOST_TOOLS
from guest.ui import BuildError


def _which(cmd: str) -> str | None:
    """shutil.which on PATH plus /usr/sbin and /sbin (depmod is there for non-root users)."""
    return shutil.which(cmd, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def missing_tools(tools: dict[str, str]) -> dict[str, str]:
    """The commands of ``tools`` (command -> package) that are not on PATH."""
    return {cmd: pkg for cmd, pkg in tools.items() if _which(cmd) is None}


def ensure_tools(tools: dict[str, str] | None = None) -> None:
    """Install (apt-get) the packages of missing build tools, or fail naming them."""
    missing = missing_tools(HOST_TOOLS if tools is None else tools)
    if not missing:
        return
    pkgs = sorted(set(missing.values()))
    what = ", ".join(f"{c} (package {p})" for c, p in missing.items())
    ui.step(f"missing build tools: {what}; installing with apt-get")
    if shutil.which("apt-get") is None:
        raise BuildError(f"missing build tools: {what}, and no apt-get to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends",
           "-o", "DPkg::Lock::Timeout=600", *pkgs]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    still = missing_tools(missing)
    if r.returncode != 0 or still:
        raise BuildError(
            f"could not install build tools {', '.join(pkgs)} "
            f"(run: apt-get install {' '.join(pkgs)}):\n{r.stderr.strip()[-2000:]}"
        )


def tool(cmd: str) -> str:
    """Absolute path of a build tool (also looks in /usr/sbin and /sbin)."""
    found = _which(cmd)
    if found is None:
        raise BuildError(f"build tool {cmd} not found (package {HOST_TOOLS.get(cmd, '?')})")
    return found

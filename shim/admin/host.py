"""`check` (can this host run pykata pods?) and `env` (the configuration in force).

`check` exits 0 when every required item is there and 1 otherwise (a configuration
that does not load counts as missing); `info` lines never change the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from typing import Any

from shim import paths
from shim.config import ConfigError, HypervisorConfig, load_config

OK, FAIL, INFO = "ok", "fail", "info"
_MARKS = {OK: "ok  ", FAIL: "FAIL", INFO: "info"}


@dataclass
class Finding:
    """One line of `check`: a required item (ok/fail) or a fact about the host (info)."""

    name: str
    status: str
    detail: str


def _protections(hv: HypervisorConfig, cache: Any) -> list[Finding]:
    """The confinement QEMU and virtiofsd get here, against the configured floor: `ok`
    at or above it, `fail` below it (pods refuse to start), `info` when off and the
    floor was lowered on purpose."""
    from shim.vmm import hostcaps
    from shim.vmm.confinement import QEMU_KEY
    from shim.vmm.qemu_args import SECCOMP
    from shim.vmm.virtiofsd import option_value

    floor = hv.confinement_floor()
    found: list[Finding] = []
    if os.path.exists(hv.path):
        on, detail = hostcaps.probe_seccomp(hv.path, cache)
        if on:
            on, detail = hostcaps.qemu_sandbox_active(hv.path, SECCOMP)
        shortfall = floor.qemu_shortfall(on, detail)
        if on:
            found.append(Finding("QEMU -sandbox", OK, f"on ({detail})"))
        elif shortfall:
            found.append(Finding("QEMU -sandbox", FAIL, f"off: {shortfall}"))
        else:
            found.append(Finding("QEMU -sandbox", INFO, f"off: {detail} ({QEMU_KEY} = false)"))
    if hv.shared_fs != "virtio-fs" or not os.path.exists(hv.virtio_fs_daemon):
        return found
    choice = hostcaps.probe_virtiofsd(hv.virtio_fs_daemon, cache)
    for option, probed, detail in (
        ("--sandbox", choice.sandbox, choice.sandbox_detail),
        ("--seccomp", choice.seccomp, choice.seccomp_detail),
    ):
        mode = option_value(hv.virtio_fs_extra_args, option)
        configured = mode is not None
        if configured:
            detail = f"set by virtio_fs_extra_args; the probe chose {probed or 'nothing'}"
        mode = mode or probed
        shortfall = floor.virtiofsd_shortfall(option, mode, detail=detail, configured=configured)
        if shortfall:
            status, text = FAIL, shortfall
        else:
            status = INFO if mode in (None, "none") else OK
            text = f"{mode or 'unknown'} ({detail})"
        found.append(Finding(f"virtiofsd {option}", status, text))
    return found


def kernel_record(kernel: str) -> dict[str, Any] | None:
    """The manifest.json record (pykata-image build) of the guest kernel at ``kernel``:
    flavour (pykata or debian-cloud), release, package; None when no manifest beside
    it names that file."""
    real = os.path.realpath(kernel)
    try:
        with open(os.path.join(os.path.dirname(real), "manifest.json")) as f:
            record = json.load(f).get("kernel") or {}
    except (OSError, ValueError, AttributeError):
        return None
    if record.get("file") != os.path.basename(real):
        return None
    return {"flavour": "debian-cloud", **record}


def kernel_words(kernel: str) -> str:
    """Which kernel runs, in words, for `check`."""
    record = kernel_record(kernel)
    if record is None:
        return "not described by a manifest.json beside it"
    what = "pykata's own" if record["flavour"] == "pykata" else "Debian's cloud kernel"
    return f"{what}, {record.get('release', '?')} ({record.get('package', '?')})"


def findings(config_path: str) -> list[Finding]:
    """Everything `check` reports, in order."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return [Finding("configuration", FAIL, str(exc))]
    found = [Finding("configuration", OK, config.source)]
    hv = config.hypervisor
    for name, path in (
        ("QEMU", hv.path),
        ("guest kernel", hv.kernel),
        # the configuration has one or both (with an image, an initrd is its first stage)
        ("guest image", hv.image or None),
        ("guest initrd", hv.initrd or None),
        ("virtiofsd", hv.virtio_fs_daemon if hv.shared_fs == "virtio-fs" else None),
        # required only when configured; `auto` falls back to virtio-serial without it
        (
            "vhost-device-vsock",
            hv.vhost_user_vsock_daemon if hv.agent_transport == "hvsock" else None,
        ),
        ("containerd", shutil.which("containerd")),
        ("shim on PATH", shutil.which("containerd-shim-pykata-v2")),
    ):
        if path is None and name in ("virtiofsd", "vhost-device-vsock", "guest image",
                                     "guest initrd"):
            continue
        ok = bool(path) and os.path.exists(path)
        fix = "" if ok else "  (make setup installs it)"
        if ok and name == "guest kernel":
            fix = f": {kernel_words(path)}"
        found.append(Finding(name, OK if ok else FAIL, f"{path or 'not found'}{fix}"))
    from shim.vmm.accel import choose_accel
    from shim.vmm.hostcaps import HostCapsCache

    root = paths.STATE_ROOT
    cache = HostCapsCache(root) if os.access(root.parent, os.W_OK) else None
    if cache is not None:
        paths.private_dir(root)
    choice = asyncio.run(choose_accel(hv.accel, hv.path, hv.kernel, cache=cache))
    found.append(Finding("accelerator", INFO, f"{choice.accel} ({choice.reason})"))
    found.append(Finding("agent channel", INFO, str(agent_channel(config))))
    vhost_net = "yes" if os.path.exists("/dev/vhost-net") else "no"
    found.append(Finding("vhost-net", INFO, vhost_net))
    found.extend(_protections(hv, cache))
    found.append(_template(config))
    return found


def agent_channel(config: Any) -> Any:
    """The agent channel (shim.vmm.channel.Choice) a pod booted now would get."""
    from shim.vmm.channel import choose

    hv = config.hypervisor
    return choose(hv.agent_transport, hv.vhost_user_vsock_daemon,
                  templated=config.factory.enable_template)


def _template(config: Any) -> Finding:
    """Whether pods are restored from a VM template here, and if not, why (never a failure:
    pods boot without one)."""
    if not config.factory.enable_template:
        return Finding("VM template", INFO, "off ([factory] enable_template = false)")
    from shim.admin.factory_command import verdict

    judged, _ = verdict(config)
    status = OK if judged.action == "restore" else INFO
    return Finding("VM template", status, f"pods {judged.action}: {judged.reason}")


def check(args: argparse.Namespace) -> int:
    """Every host requirement, one line each (or one JSON document); exit 1 when any fails."""
    found = findings(args.config)
    failures = sum(f.status == FAIL for f in found)
    if args.json:
        document = {"ok": not failures, "checks": [asdict(f) for f in found]}
        print(json.dumps(document, indent=2))
    else:
        for f in found:
            print(f"[{_MARKS[f.status]}] {f.name:<28} {f.detail}")
        if len(found) > 1:  # not just a configuration that failed to load
            print(
                "host can run pykata pods" if not failures else f"{failures} requirement(s) missing"
            )
    return 1 if failures else 0


def env(args: argparse.Namespace) -> int:
    """The configuration in force, and where it came from, as JSON."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 1
    document = asdict(config)
    channel = agent_channel(config)
    document["agent_channel"] = {"transport": channel.kind, "reason": channel.reason}
    # which guest kernel runs: the record pykata-image wrote beside it (null if none)
    document["hypervisor"]["kernel_build"] = kernel_record(config.hypervisor.kernel)
    from shim.admin.factory_command import verdict

    judged, facts = verdict(config)
    document["factory"]["template"] = {**facts, "action": judged.action, "reason": judged.reason}
    print(json.dumps(document, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    chk = sub.add_parser(
        "check",
        help="can this host run pykata pods? (exit 0 yes, 1 no)",
        description="Exit status 0 when every required item is present, 1 otherwise.",
    )
    chk.add_argument("--json", action="store_true", help="one JSON document instead of lines")
    chk.set_defaults(func=check)
    env_parser = sub.add_parser("env", help="the configuration in force")
    env_parser.add_argument(
        "--json", action="store_true", help="JSON output (the only format; accepted as Kata's)"
    )
    env_parser.set_defaults(func=env)

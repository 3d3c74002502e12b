"""`factory init|status|destroy`: the VM template pods are restored from (Kata's names)."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from shim.admin.errors import AdminError
from shim.config import Config, ConfigError, load_config


def _config(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise AdminError(str(exc)) from None


def _vm_config(config: Config) -> Any:
    from shim.sandbox.sandbox import vm_config

    vm = vm_config(config, None)
    vm.template_path = config.factory.template_path
    return vm


def verdict(config: Config) -> tuple[Any, dict[str, Any]]:
    """Whether a pod would be restored from the template now, and the template's facts.

    The accelerator and channel are as a pod would resolve them here."""
    from shim import paths
    from shim.vmm import template
    from shim.vmm.accel import choose_accel
    from shim.vmm.factory import key
    from shim.vmm.hostcaps import HostCapsCache
    from shim.vmm.vm import channel_kind, resolve_firmware

    vm = _vm_config(config)
    tdir = template.TemplateDir(Path(config.factory.template_path))
    cache = HostCapsCache(paths.STATE_ROOT) if paths.STATE_ROOT.is_dir() else None
    accel = asyncio.run(choose_accel(vm.accel, vm.qemu_path, vm.kernel, vm.cpu_model, cache=cache))
    firmware = resolve_firmware(vm.firmware)
    shape, inputs = key(vm, accel=accel.accel, cpu=accel.cpu, firmware=firmware,
                        channel=channel_kind(vm))
    return template.judge(tdir, shape, inputs), template.describe(tdir)


def init(args: argparse.Namespace) -> int:
    """Make (or remake, with --force) the template for the configuration in force."""
    from shim import paths
    from shim.vmm.factory import build
    from shim.vmm.template import TemplateDir

    config = _config(args)
    tdir = TemplateDir(Path(config.factory.template_path))
    started = time.time()
    try:
        meta = asyncio.run(build(_vm_config(config), tdir, cache_dir=paths.STATE_ROOT,
                                 force=args.force))
    except Exception as exc:  # VMStartError and OSError carry the reason
        raise AdminError(f"making the template failed: {exc}") from None
    made = meta.get("created_unix", 0) >= started
    print(f"template {'made' if made else 'already up to date'}: {tdir.path} "
          f"({meta.get('created')}, boot and save {meta.get('build_seconds')} s)")
    if not config.factory.enable_template:
        print("note: [factory] enable_template is false: pods boot until it is set")
    return 0


def status(args: argparse.Namespace) -> int:
    """The template's state: present, fits this configuration, or why not. Exit 1 if a pod
    could not be restored from it now."""
    config = _config(args)
    judged, facts = verdict(config)
    facts.update(enabled=config.factory.enable_template, action=judged.action,
                 reason=judged.reason)
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        print(f"template path   {facts['path']}")
        print(f"enabled         {str(facts['enabled']).lower()}")
        if facts["present"]:
            print(f"created         {facts['created']} ({facts['age_seconds']:.0f} s ago)")
            print(f"guest RAM held  {facts['memory_bytes_used'] / 2**20:.1f} MiB"
                  f"{'' if facts['on_tmpfs'] else ' (not on tmpfs: on disk)'}")
            print(f"device state    {facts['state_bytes'] / 1024:.0f} KiB")
        print(f"a pod would     {judged.action} ({judged.reason})")
    return 0 if judged.action == "restore" else 1


def destroy(args: argparse.Namespace) -> int:
    """Remove the template."""
    from shim.vmm.template import TemplateDir
    from shim.vmm.template import destroy as remove

    config = _config(args)
    tdir = TemplateDir(Path(config.factory.template_path))
    print(f"template {'removed' if remove(tdir) else 'was not there'}: {tdir.path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    factory = sub.add_parser("factory", help="the VM template pods are restored from")
    actions = factory.add_subparsers(dest="action", required=True)
    made = actions.add_parser("init", help="boot a VM and save it as the template")
    made.add_argument("--force", action="store_true", help="remake it even if up to date")
    made.set_defaults(func=init)
    shown = actions.add_parser("status", help="whether pods would be restored from it")
    shown.add_argument("--json", action="store_true", help="one JSON document")
    shown.set_defaults(func=status)
    actions.add_parser("destroy", help="remove the template").set_defaults(func=destroy)

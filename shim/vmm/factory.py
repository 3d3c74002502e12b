"""Kata's VM factory, templates only: make a template, and decide per pod whether its
VM is restored from one (and what the clone is handed), rebuilt first, or booted.

This is the layer above the launcher (shim.vmm.vm.launch_vm, which boots, or restores
a clone it is handed, and knows nothing of templates): `start_vm` is what
shim.vmm.start_vm runs for a pod, `build` what `pykata-runtime factory init` runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

import structlog

from pykata_common.contract import PREWARM_PARAM
from shim.vmm import template
from shim.vmm.accel import AccelChoice
from shim.vmm.clone import Clone
from shim.vmm.hostcaps import DEFAULT_CACHE_DIR
from shim.vmm.template import REBUILD, RESTORE, TemplateDir, Verdict
from shim.vmm.vm import RestoreFailed, RunningVM, channel_kind, launch_vm, resolve_firmware
from shim.vmm.vm_config import VMConfig

log = structlog.get_logger(__name__)

# seconds between hanging up on the agent and the pause: the agent ends that session
# (a clone's host is a new one, whose ttrpc stream ids start again at 1) and waits
IDLE_SETTLE = 0.3
# the guest reports freed pages 2 s after it freed them: wait, so the template's RAM
# file holds only pages in use (the initrd's copy alone is ~45 MiB)
REPORTING_SETTLE = 2.5


def key(
    config: VMConfig, *, accel: str, cpu: str, firmware: str | None, channel: str
) -> tuple[dict, dict]:
    """(shape, inputs) of the template a VM with this config would be a clone of."""
    shape = template.shape(config, accel=accel, cpu=cpu, firmware=firmware, channel=channel)
    return shape, template.inputs(config, firmware)


async def _lock(tdir: TemplateDir, exclusive: bool) -> int:
    """template.lock without blocking the event loop while another holds it."""
    return await asyncio.to_thread(template.lock, tdir, exclusive)


def _open_clone(tdir: TemplateDir, shape: dict, inputs: dict) -> Clone | None:
    """Under the shared lock: check again, make the memfd (sized, still empty), open the
    state."""
    if template.judge(tdir, shape, inputs).action != RESTORE:
        return None
    clone = Clone(tdir, -1, os.open(tdir.state, os.O_RDONLY | os.O_CLOEXEC))
    try:
        clone.memory_fd = os.memfd_create("pykata-guest-ram", os.MFD_CLOEXEC)
        os.ftruncate(clone.memory_fd, tdir.memory.stat().st_size)
    except BaseException:
        for fd in (clone.memory_fd, clone.state_fd):
            if fd >= 0:
                os.close(fd)
        raise
    return clone


async def prepare_clone(
    config: VMConfig,
    *,
    accel: Any,
    firmware: str | None,
    channel: str,
    cache_dir: Path | None,
) -> Clone | None:
    """The clone to start, or None to boot (logged with the reason). A stale template
    (one of its files changed) is rebuilt first."""
    assert config.template_path
    tdir = TemplateDir(Path(config.template_path))
    shape, inputs = key(config, accel=accel.accel, cpu=accel.cpu, firmware=firmware,
                        channel=channel)
    verdict = template.judge(tdir, shape, inputs, nics=len(config.nics))
    if verdict.action == REBUILD:
        log.info("rebuilding the VM template", template=str(tdir.path), reason=verdict.reason)
        try:
            await build(config, tdir, cache_dir=cache_dir)
        except Exception as exc:  # the pod must not fail for the template's sake
            log.warning("rebuilding the VM template failed: booting the VM",
                        template=str(tdir.path), error=str(exc))
            return None
        verdict = template.judge(tdir, shape, inputs, nics=len(config.nics))
    if verdict.action != RESTORE:
        log.info("booting the VM: no template used", template=str(tdir.path), reason=verdict.reason)
        return None
    fd = await _lock(tdir, exclusive=False)
    try:
        clone = _open_clone(tdir, shape, inputs)
    except BaseException:
        os.close(fd)
        raise
    if clone is None:
        os.close(fd)
        log.info("booting the VM: the template changed meanwhile", template=str(tdir.path))
        return None
    # the copy goes on while virtiofsd and QEMU start; it must end before the state loads
    clone.copying = asyncio.ensure_future(asyncio.to_thread(clone.copy, fd))
    return clone


def template_config(config: VMConfig) -> VMConfig:
    """The VM a template is made from: the pod's, less what is per pod, and an agent that
    prewarms (the shape is the pod's: clones never boot, so the extra parameter is moot)."""
    return dataclasses.replace(
        config, nics=[], netns=None, template_path=None,
        kernel_params=[*config.kernel_params, PREWARM_PARAM],
    )


async def build(
    config: VMConfig,
    tdir: TemplateDir,
    *,
    cache_dir: Path | None,
    force: bool = False,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Boot a template VM, wait until its agent is idle, save it; the new template's meta.

    Holds the exclusive lock: a second builder waits, then finds the template made
    (unless `force`)."""
    firmware = resolve_firmware(config.firmware)
    lock = await _lock(tdir, exclusive=True)
    work = tdir.build_dir()
    try:
        if not force:
            meta = template.load_meta(tdir)
            if meta is not None and _current(config, meta, firmware):
                return meta
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, mode=0o700)
        t0 = time.monotonic()
        vm = await launch_vm(template_config(config), work, None, cache_dir=cache_dir,
                             timeout=timeout, as_template=True)
        try:
            await vm.agent.check(timeout=5.0)
            await vm.agent.close()
            await asyncio.sleep(REPORTING_SETTLE if config.free_page_reporting else IDLE_SETTLE)
            from shim.vmm.restore import save

            await save(vm.qmp, work / "state")
        finally:
            await vm.stop()
        shape, inputs = key(config, accel=vm.accel.accel, cpu=vm.accel.cpu, firmware=firmware,
                            channel=channel_kind(config))
        meta = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "created_unix": time.time(),
            "build_seconds": round(time.monotonic() - t0, 2),
            "boot_timings": vm.timings,
            "shape": shape,
            "inputs": inputs,
        }
        template.write_meta(work, meta)
        template.install(tdir, work)
        if not template.on_tmpfs(tdir.path):
            log.warning("the VM template is not on tmpfs: its RAM file lives on disk",
                        template=str(tdir.path))
        log.info("VM template made", template=str(tdir.path), seconds=meta["build_seconds"],
                 memory_mib=round(template.allocated(tdir.memory) / 2**20, 1))
        return meta
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.close(lock)


def _current(config: VMConfig, meta: dict[str, Any], firmware: str | None) -> bool:
    """Whether a template's meta matches this config's files and shape (cheap check:
    the accelerator is compared as recorded)."""
    have = meta.get("shape", {})
    shape, inputs = key(config, accel=have.get("accel", ""), cpu=have.get("cpu", ""),
                        firmware=firmware, channel=channel_kind(config))
    return shape == have and inputs == meta.get("inputs")


async def start_vm(
    config: VMConfig,
    state_dir: Path,
    shared_dir: Path | None,
    *,
    timeout: float | None = None,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    as_template: bool = False,
) -> RunningVM:
    """A pod's VM: restored from the template at config.template_path when one fits
    (rebuilt first when stale), else booted; a restore that fails falls back to a boot.
    Arguments and errors as launch_vm's."""
    if not config.template_path or as_template:
        return await launch_vm(config, state_dir, shared_dir, timeout=timeout,
                               cache_dir=cache_dir, as_template=as_template)

    async def clone_of(accel: AccelChoice, firmware: str | None, channel: str) -> Clone | None:
        return await prepare_clone(config, accel=accel, firmware=firmware, channel=channel,
                                   cache_dir=cache_dir)

    try:
        return await launch_vm(config, state_dir, shared_dir, timeout=timeout,
                               cache_dir=cache_dir, clone_source=clone_of)
    except RestoreFailed as failed:
        log.warning(
            "restoring the VM from its template failed: booting it",
            template=config.template_path,
            error=str(failed.__cause__),
        )
        booted = dataclasses.replace(config, template_path=None)
        return await launch_vm(booted, state_dir, shared_dir, timeout=timeout,
                               cache_dir=cache_dir)


__all__ = ["Clone", "Verdict", "build", "prepare_clone", "start_vm", "template_config"]

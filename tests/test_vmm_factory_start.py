"""factory.start_vm, the template decision above the launcher, with a fake launcher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shim.vmm import factory
from shim.vmm.confinement import ConfinementError
from shim.vmm.errors import VMStartError
from shim.vmm.vm import RestoreFailed
from shim.vmm.vm_config import VMConfig

STATE, SHARED = Path("/nonexistent/state"), Path("/nonexistent/shared")


class FakeLauncher:
    """Records each launch; the first `failures` launches raise what they are given."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, config: VMConfig, state_dir: Path, shared_dir: Path | None,
                       **kwargs: Any) -> str:
        self.calls.append({"config": config, **kwargs})
        if self.failures:
            raise self.failures.pop(0)
        return f"vm{len(self.calls)}"


def restore_failed() -> RestoreFailed:
    try:
        raise RestoreFailed() from VMStartError("the clone's QEMU exited")
    except RestoreFailed as failed:
        return failed


@pytest.fixture
def launcher(monkeypatch: pytest.MonkeyPatch):
    def install(*failures: BaseException) -> FakeLauncher:
        fake = FakeLauncher(*failures)
        monkeypatch.setattr(factory, "launch_vm", fake)
        return fake

    return install


async def test_without_a_template_the_vm_boots(launcher):
    fake = launcher()
    assert await factory.start_vm(VMConfig(), STATE, SHARED, timeout=3.0) == "vm1"
    assert len(fake.calls) == 1 and "clone_source" not in fake.calls[0]
    assert fake.calls[0]["timeout"] == 3.0


async def test_the_launcher_asks_the_factory_for_its_clone(launcher, monkeypatch):
    asked: list[dict[str, Any]] = []

    async def prepare_clone(config: VMConfig, **kwargs: Any) -> None:
        asked.append({"config": config, **kwargs})

    monkeypatch.setattr(factory, "prepare_clone", prepare_clone)
    fake = launcher()
    config = VMConfig(template_path="/run/t")
    await factory.start_vm(config, STATE, SHARED, cache_dir=Path("/c"))
    assert await fake.calls[0]["clone_source"]("ACCEL", "qboot", "serial") is None
    assert asked == [{"config": config, "accel": "ACCEL", "firmware": "qboot",
                      "channel": "serial", "cache_dir": Path("/c")}]


async def test_a_restore_that_fails_falls_back_to_a_boot(launcher):
    fake = launcher(restore_failed())
    config = VMConfig(template_path="/run/t")
    assert await factory.start_vm(config, STATE, SHARED) == "vm2"
    first, second = fake.calls
    assert first["config"].template_path == "/run/t" and first["clone_source"] is not None
    assert second["config"].template_path is None and "clone_source" not in second
    assert config.template_path == "/run/t"  # the caller's config is left alone


@pytest.mark.parametrize("error", [ConfinementError("floor"), VMStartError("no QEMU")])
async def test_other_failures_are_not_retried(launcher, error):
    fake = launcher(error)
    with pytest.raises(type(error)):
        await factory.start_vm(VMConfig(template_path="/run/t"), STATE, SHARED)
    assert len(fake.calls) == 1


async def test_a_template_vm_is_booted_without_asking_for_a_clone(launcher):
    fake = launcher()
    await factory.start_vm(VMConfig(template_path="/run/t"), STATE, None, as_template=True)
    assert fake.calls[0]["as_template"] is True and "clone_source" not in fake.calls[0]

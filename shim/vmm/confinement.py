"""The confinement floor: the weakest QEMU and virtiofsd confinement a pod may start with.

Pure rules, no I/O: the probes (shim.vmm.hostcaps) say what this host can do, the
configuration says what is required, and a pod starts only when every protection is
at or above the floor. Lowering the floor is an explicit configuration key, never a
fallback taken on the quiet.
"""

from __future__ import annotations

from dataclasses import dataclass

from shim.vmm.errors import VMStartError

# strongest last; virtiofsd's own defaults are namespace and kill
VIRTIOFSD_SANDBOX_RANK = {"none": 0, "chroot": 1, "namespace": 2}
VIRTIOFSD_SECCOMP_RANK = {"none": 0, "log": 1, "trap": 2, "kill": 3}

QEMU_KEY = "[hypervisor.qemu] qemu_sandbox_required"
SANDBOX_KEY = "[hypervisor.qemu] virtio_fs_sandbox_floor"
SECCOMP_KEY = "[hypervisor.qemu] virtio_fs_seccomp_floor"


class ConfinementError(VMStartError):
    """A protection the floor requires is missing on this host (or was configured off)."""


@dataclass(frozen=True)
class ConfinementFloor:
    """What a pod needs at least: QEMU's -sandbox, virtiofsd's --sandbox and --seccomp."""

    qemu_sandbox: bool = True
    virtiofsd_sandbox: str = "namespace"
    virtiofsd_seccomp: str = "kill"

    def qemu_shortfall(self, sandboxed: bool, detail: str) -> str | None:
        """Why QEMU without a seccomp sandbox is below the floor (None: it is not)."""
        if sandboxed or not self.qemu_sandbox:
            return None
        return (
            f"QEMU's seccomp sandbox (-sandbox) is required and unavailable ({detail}); "
            f"lower the floor explicitly with {QEMU_KEY} = false"
        )

    def virtiofsd_shortfall(
        self, option: str, mode: str | None, *, detail: str = "", configured: bool = False
    ) -> str | None:
        """Why virtiofsd's `option` (--sandbox or --seccomp) at `mode` (None: no mode
        works) is below the floor; None when it is not. `configured`: the mode comes
        from virtio_fs_extra_args (held to the floor like a probed one)."""
        floor, rank, key = {
            "--sandbox": (self.virtiofsd_sandbox, VIRTIOFSD_SANDBOX_RANK, SANDBOX_KEY),
            "--seccomp": (self.virtiofsd_seccomp, VIRTIOFSD_SECCOMP_RANK, SECCOMP_KEY),
        }[option]
        if rank[floor] == 0 or rank.get(mode or "", -1) >= rank[floor]:
            return None  # a floor of "none" takes whatever runs, virtiofsd's default included
        source = (
            "virtio_fs_extra_args sets it"
            if configured
            else f"the strongest this host runs: {detail or 'no mode worked'}"
        )
        return (
            f"virtiofsd {option}={mode or 'nothing'} is below the floor {floor} ({source}); "
            f'lower the floor explicitly with {key} = "{mode or "none"}"'
        )

    def virtiofsd_shortfalls(
        self,
        sandbox: str | None,
        seccomp: str | None,
        *,
        detail: str = "",
        configured: tuple[str, ...] = (),
    ) -> list[str | None]:
        """virtiofsd_shortfall for both options."""
        return [
            self.virtiofsd_shortfall(option, mode, detail=detail, configured=option in configured)
            for option, mode in (("--sandbox", sandbox), ("--seccomp", seccomp))
        ]


def refuse(*shortfalls: str | None) -> None:
    """Raise ConfinementError naming every missing protection given (None: not missing)."""
    missing = [why for why in shortfalls if why]
    if missing:
        raise ConfinementError(
            "the host's confinement is below the configured floor: " + "; ".join(missing)
        )

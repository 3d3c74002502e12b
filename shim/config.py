"""The runtime configuration: Kata's key names, read from TOML in a fixed search order."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from shim.vmm.confinement import VIRTIOFSD_SANDBOX_RANK, VIRTIOFSD_SECCOMP_RANK, ConfinementFloor

ENV_CONFIG = "PYKATA_CONF_FILE"
SEARCH_PATHS = (
    Path("/etc/pykata/configuration.toml"),
    Path("/usr/share/pykata/defaults/configuration.toml"),
)
SHARED_FS = ("virtio-fs", "none")
ACCELS = ("auto", "kvm", "tcg")
AGENT_TRANSPORTS = ("auto", "vsock", "hvsock", "serial")  # shim.vmm.vm_config.AgentTransport
NETWORK_MODELS = ("tcfilter", "macvtap", "none")
VIRTIOFSD_SANDBOX_FLOORS = tuple(reversed(VIRTIOFSD_SANDBOX_RANK))  # strongest first
VIRTIOFSD_SECCOMP_FLOORS = tuple(reversed(VIRTIOFSD_SECCOMP_RANK))


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or holds a bad value."""


@dataclass
class HypervisorConfig:
    """[hypervisor.qemu]"""

    path: str = "/usr/bin/qemu-system-x86_64"
    kernel: str = "/usr/share/pykata/vmlinuz"
    # the guest's root: an ext4 image on virtio-pmem, mounted read-only with DAX by the
    # kernel itself, or by `initrd` as its first stage (a modular kernel's); with no
    # image, the initrd is the whole guest, unpacked into guest RAM
    image: str = "/usr/share/pykata/pykata-rootfs.img"
    initrd: str = ""
    machine_type: str = "q35"
    kernel_params: str = ""
    default_vcpus: int = 1
    default_memory: int = 512
    default_maxvcpus: int = 0  # what a pod's limits may grow its VM to (0: the host's CPUs)
    default_maxmemory: int = 0  # MiB (0: the host's memory)
    shared_fs: str = "virtio-fs"
    virtio_fs_daemon: str = "/usr/share/pykata/virtiofsd/virtiofsd"
    virtio_fs_cache: str = "auto"
    virtio_fs_extra_args: list[str] = field(default_factory=list)
    accel: str = "auto"
    # TCG's translation cache in MiB, where there is no KVM (0: QEMU's default, which a
    # VM fills to 64 MiB and more: host memory each pod holds)
    tcg_cache_size: int = 0
    # the agent's channel: auto (vsock where /dev/vhost-vsock works, else hybrid vsock
    # where vhost_user_vsock_daemon is installed, else serial), vsock, hvsock, serial
    agent_transport: str = "auto"
    vhost_user_vsock_daemon: str = "/usr/share/pykata/vhost-device-vsock/vhost-device-vsock"
    enable_debug: bool = False
    reclaim_guest_freed_memory: bool = True  # virtio-balloon free page reporting (Kata's key)
    # the confinement floor: a pod refuses to start below it (shim.vmm.confinement)
    qemu_sandbox_required: bool = True
    virtio_fs_sandbox_floor: str = "namespace"
    virtio_fs_seccomp_floor: str = "kill"

    def maxima(self) -> tuple[int, int]:
        """(vCPUs, MiB) a pod's VM may grow to: default_maxvcpus and default_maxmemory,
        or the host's CPUs and memory where they are 0, never below the defaults."""
        cpus = self.default_maxvcpus or len(os.sched_getaffinity(0)) or 1
        memory = self.default_maxmemory or (
            os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
        )
        return max(cpus, self.default_vcpus), max(memory, self.default_memory)

    def confinement_floor(self) -> ConfinementFloor:
        """The floor these keys set."""
        return ConfinementFloor(
            qemu_sandbox=self.qemu_sandbox_required,
            virtiofsd_sandbox=self.virtio_fs_sandbox_floor,
            virtiofsd_seccomp=self.virtio_fs_seccomp_floor,
        )


@dataclass
class AgentConfig:
    """[agent.kata]"""

    dial_timeout: float = 60.0
    enable_debug: bool = False
    debug_console_enabled: bool = False


@dataclass
class RuntimeConfig:
    """[runtime]"""

    enable_debug: bool = False
    internetworking_model: str = "tcfilter"
    create_container_timeout: float = 60.0  # seconds for the agent's CreateContainer (Kata's)
    # the shim daemon, QEMU and virtiofsd in the sandbox's cgroup (Kata's key)
    sandbox_cgroup_only: bool = True
    # the VM is sized at creation from the pod's limits, on top of the defaults
    static_sandbox_resource_mgmt: bool = True
    # the guest's TCP listeners mirrored on the pod netns' loopback (CRI port-forward)
    port_forward: bool = True


@dataclass
class FactoryConfig:
    """[factory]: VM templates (Kata's keys). Off by default."""

    enable_template: bool = False
    template_path: str = "/run/pykata-factory/template"


@dataclass
class Config:
    """The whole configuration, with where it came from."""

    hypervisor: HypervisorConfig = field(default_factory=HypervisorConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    factory: FactoryConfig = field(default_factory=FactoryConfig)
    source: str = "built-in defaults"


def find_config_file(config_path: str = "") -> Path | None:
    """The file to read: ConfigPath option, then $PYKATA_CONF_FILE, then the defaults."""
    for explicit in (config_path, os.environ.get(ENV_CONFIG, "")):
        if explicit:
            path = Path(explicit)
            if not path.is_file():
                raise ConfigError(f"configuration file {path} does not exist")
            return path
    for path in SEARCH_PATHS:
        if path.is_file():
            return path
    return None


def _fill(section: Any, table: dict[str, Any], where: str) -> None:
    known = {f.name: f for f in fields(section)}
    for key, value in table.items():
        if key not in known:
            continue  # Kata has many keys we do not use; ignore them quietly
        default = getattr(section, key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{key} must be true or false, not {value!r}")
        elif isinstance(default, list):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}.{key} must be a list of strings, not {value!r}")
            value = list(value)
        elif isinstance(default, int | float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}.{key} must be a number, not {value!r}")
            value = type(default)(value)
        elif not isinstance(value, str):
            raise ConfigError(f"{where}.{key} must be a string, not {value!r}")
        setattr(section, key, value)


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse TOML text into a Config, checking the values we act on."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    config = Config(source=source)
    _fill(config.hypervisor, data.get("hypervisor", {}).get("qemu", {}), "hypervisor.qemu")
    _fill(config.agent, data.get("agent", {}).get("kata", {}), "agent.kata")
    _fill(config.runtime, data.get("runtime", {}), "runtime")
    _fill(config.factory, data.get("factory", {}), "factory")
    checks = (
        ("hypervisor.qemu.shared_fs", config.hypervisor.shared_fs, SHARED_FS),
        (
            "hypervisor.qemu.virtio_fs_sandbox_floor",
            config.hypervisor.virtio_fs_sandbox_floor,
            VIRTIOFSD_SANDBOX_FLOORS,
        ),
        (
            "hypervisor.qemu.virtio_fs_seccomp_floor",
            config.hypervisor.virtio_fs_seccomp_floor,
            VIRTIOFSD_SECCOMP_FLOORS,
        ),
        ("hypervisor.qemu.accel", config.hypervisor.accel, ACCELS),
        ("hypervisor.qemu.agent_transport", config.hypervisor.agent_transport, AGENT_TRANSPORTS),
        ("runtime.internetworking_model", config.runtime.internetworking_model, NETWORK_MODELS),
    )
    for key, value, allowed in checks:
        if value not in allowed:
            raise ConfigError(f"{source}: {key} = {value!r}; expected one of {', '.join(allowed)}")
    if config.hypervisor.default_vcpus < 1 or config.hypervisor.default_memory < 64:
        raise ConfigError(f"{source}: default_vcpus must be >= 1 and default_memory >= 64 (MiB)")
    if not config.hypervisor.image and not config.hypervisor.initrd:
        raise ConfigError(f"{source}: hypervisor.qemu has neither image nor initrd: the "
                          "guest needs one of them (pykata-image build makes both)")
    if not 0 <= config.hypervisor.tcg_cache_size <= 4096:
        raise ConfigError(f"{source}: hypervisor.qemu.tcg_cache_size must be 0 (QEMU's "
                          "default) or a size in MiB up to 4096")
    if not os.path.isabs(config.factory.template_path):
        raise ConfigError(f"{source}: factory.template_path must be an absolute path")
    return config


def load_config(config_path: str = "", config_body: bytes = b"") -> Config:
    """Read the configuration the search order selects (defaults when there is none).

    `config_body` (containerd 1.7+'s CRI option) is the file's text itself, used
    when no `config_path` is given.
    """
    if config_body and not config_path:
        try:
            text = config_body.decode()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"runtime option config_body is not UTF-8 text: {exc}") from None
        return parse_config(text, "runtime option config_body")
    path = find_config_file(config_path)
    if path is None:
        return Config()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc}") from None
    return parse_config(text, str(path))

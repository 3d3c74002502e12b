"""Kernel module selection: modules.dep parsing and load order."""

from __future__ import annotations

import pytest

from guest.kernel import load_order, module_name, parse_modules_dep
from guest.ui import BuildError

SAMPLE = """\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/fuse/fuse.ko:
kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko \
kernel/fs/fuse/fuse.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
""".replace("\\\n", "")


def names(paths: list[str]) -> list[str]:
    return [module_name(p) for p in paths]


def test_module_name_normalises() -> None:
    assert module_name("kernel/drivers/char/hw_random/virtio-rng.ko") == "virtio_rng"
    assert module_name("kernel/fs/overlayfs/overlay.ko.xz") == "overlay"
    assert module_name("a/b/fuse.ko.zst") == "fuse"


def test_parse_modules_dep() -> None:
    deps = parse_modules_dep(SAMPLE)
    assert deps["virtio_net"][0] == "kernel/drivers/net/virtio_net.ko"
    assert "kernel/net/core/failover.ko" in deps["virtio_net"][1]
    assert deps["fuse"] == ("kernel/fs/fuse/fuse.ko", [])


def test_dependencies_load_first_and_once() -> None:
    order = names(load_order(parse_modules_dep(SAMPLE), ["virtio_pci", "virtio_net", "virtiofs"]))
    assert len(order) == len(set(order))
    for before, after in [("virtio_ring", "virtio"), ("virtio", "virtio_pci"),
                          ("virtio_pci_modern_dev", "virtio_pci"), ("failover", "net_failover"),
                          ("net_failover", "virtio_net"), ("fuse", "virtiofs")]:
        assert order.index(before) < order.index(after), (before, after)
    assert set(order) == {"virtio_ring", "virtio", "virtio_pci_legacy_dev",
                          "virtio_pci_modern_dev", "virtio_pci", "failover", "net_failover",
                          "virtio_net", "fuse", "virtiofs"}


def test_dash_names_and_leaf_order_kept() -> None:
    order = names(load_order(parse_modules_dep(SAMPLE), ["fuse", "virtio-rng"]))
    assert order == ["fuse", "virtio_ring", "virtio", "virtio_rng"]


def test_unknown_module_is_named() -> None:
    with pytest.raises(BuildError, match="no_such_mod"):
        load_order(parse_modules_dep(SAMPLE), ["no_such_mod"])


def test_missing_dependency_names_its_user() -> None:
    deps = parse_modules_dep("kernel/a.ko: kernel/gone.ko\n")
    with pytest.raises(BuildError, match=r"gone.*needed by a"):
        load_order(deps, ["a"])


def test_cycle_is_reported() -> None:
    deps = parse_modules_dep("kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n")
    with pytest.raises(BuildError, match="cycle"):
        load_order(deps, ["a"])

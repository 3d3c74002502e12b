"""What the image gains for iptables: on-demand modules, plugin folders, program links."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from guest import kernel, rootfs, spec
from guest.ui import BuildError


def fake_kernel(root: Path) -> Path:
    """An unpacked kernel package with a tiny modules tree (no depmod needed to read it)."""
    release = "6.1.0-test"
    mods = root / "lib/modules" / release
    for rel in ("kernel/a/virtio.ko", "kernel/n/x_tables.ko", "kernel/n/xt_comment.ko",
                "kernel/n/nf_tables.ko", "kernel/n/nfnetlink.ko"):  # fmt: skip
        (mods / rel).parent.mkdir(parents=True, exist_ok=True)
        (mods / rel).write_bytes(b"\x7fELF fake module")
    (mods / "modules.dep").write_text(
        "kernel/a/virtio.ko:\nkernel/n/x_tables.ko:\n"
        "kernel/n/xt_comment.ko: kernel/n/x_tables.ko\n"
        "kernel/n/nfnetlink.ko:\nkernel/n/nf_tables.ko: kernel/n/nfnetlink.ko\n"
    )
    return root


def test_on_demand_modules_are_shipped_but_not_loaded_at_boot(tmp_path, monkeypatch):
    monkeypatch.setattr(kernel, "depmod", lambda base, release: None)
    kroot = fake_kernel(tmp_path / "k")
    staging = tmp_path / "root"
    boot, later = kernel.stage_modules(kroot, staging, ["virtio"], "etc/pykata/modules",
                                       on_demand=["xt_comment", "nf_tables", "virtio"])
    assert boot == ["virtio"]
    assert later == ["x_tables", "xt_comment", "nfnetlink", "nf_tables"]
    assert (staging / "etc/pykata/modules").read_text() == (
        "/lib/modules/6.1.0-test/kernel/a/virtio.ko\n")
    assert (staging / "usr/lib/modules/6.1.0-test/kernel/n/nf_tables.ko").is_file()


def test_plugins_keep_their_symlinks_and_links_must_resolve(tmp_path):
    src = tmp_path / "pkg/usr/lib/x86_64-linux-gnu/xtables"
    src.mkdir(parents=True)
    (src / "libxt_NAT.so").write_bytes(b"nat")
    (src / "libxt_SNAT.so").symlink_to("libxt_NAT.so")
    (src / "libebt_ip.so").write_bytes(b"ebtables: left out")
    root = tmp_path / "root"
    rootfs.base_layout(root)
    folder = "usr/lib/x86_64-linux-gnu/xtables"
    copied = rootfs.install_plugins(src, root, folder, ("libxt_",))
    assert [p.name for p in copied] == ["libxt_NAT.so"]  # only regular files join the closure
    assert (root / folder / "libxt_SNAT.so").is_symlink()
    assert not (root / folder / "libebt_ip.so").exists()
    (root / "usr/sbin/xtables-nft-multi").write_bytes(b"")
    rootfs.make_links(root, {"usr/sbin/iptables-restore": "xtables-nft-multi"})
    assert (root / "usr/sbin/iptables-restore").resolve() == (
        root / "usr/sbin/xtables-nft-multi").resolve()
    with pytest.raises(BuildError, match="points at nothing"):
        rootfs.make_links(root, {"sbin/ip6tables": "missing-binary"})


def test_spec_ships_iptables_and_the_exposition_writer():
    assert "usr/sbin/xtables-nft-multi" in spec.PROGRAM_PACKAGES["iptables"]
    for name in ("iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"):
        assert spec.PROGRAM_LINKS[f"usr/sbin/{name}"] == "xtables-nft-multi"
    assert {"nf_tables", "nft_compat", "nft_chain_nat", "xt_MASQUERADE"} <= set(
        spec.ON_DEMAND_MODULES)
    assert not set(spec.ON_DEMAND_MODULES) & set(spec.GUEST_MODULES)
    # the writer the agent imports ships in the neutral package, no shim file goes in
    # (tests/test_import_rules.py checks that package stands alone)
    root = Path(__file__).resolve().parent.parent
    assert "pykata_common" in spec.REPO_PACKAGES and "shim" not in spec.REPO_PACKAGES
    assert (root / "pykata_common/exposition.py").is_file()


@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox")
def test_busybox_modprobe_reads_modules_alias(tmp_path):
    """The kernel asks /sbin/modprobe for aliases (ipt_comment, nft-chain-2-nat...):
    the guest's busybox resolves them from modules.alias. -D only prints."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root (chroot)")
    release = os.uname().release
    mods = tmp_path / "lib/modules" / release
    (mods / "kernel").mkdir(parents=True)
    (tmp_path / "bin").mkdir()
    shutil.copy2(shutil.which("busybox") or "", tmp_path / "bin/busybox")
    (mods / "modules.dep").write_text("kernel/x_tables.ko:\nkernel/xt_comment.ko: "
                                      "kernel/x_tables.ko\n")  # fmt: skip
    (mods / "modules.alias").write_text("alias ipt_comment xt_comment\n")
    done = subprocess.run(["chroot", str(tmp_path), "/bin/busybox", "modprobe", "-D",
                           "ipt_comment"], capture_output=True, text=True)  # fmt: skip
    if "not a static" in done.stderr or done.returncode == 127:
        pytest.skip("busybox is not static")
    assert done.stdout.split() == [
        "insmod", f"/lib/modules/{release}/kernel/x_tables.ko",
        "insmod", f"/lib/modules/{release}/kernel/xt_comment.ko"]  # fmt: skip

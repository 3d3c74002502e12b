"""Which agent channel a VM gets (shim.vmm.channel), from the config key to `check`/`env`."""

from __future__ import annotations

import argparse
import json

import pytest

from shim.config import ConfigError, parse_config
from shim.vmm import channel
from shim.vmm.channel import HVSOCK, SERIAL, VSOCK, choose, for_config
from shim.vmm.vm import channel_kind
from shim.vmm.vm_config import VMConfig

DAEMON = "/usr/share/pykata/vhost-device-vsock/vhost-device-vsock"


@pytest.fixture
def host(monkeypatch):
    """A host whose vhost-vsock and hybrid vsock daemon the test decides."""
    state = {"vhost_vsock": False, "daemon": False}
    monkeypatch.setattr(channel, "vhost_vsock_usable", lambda *a: state["vhost_vsock"])
    monkeypatch.setattr(channel, "daemon_installed", lambda path: state["daemon"] and bool(path))
    return state


@pytest.mark.parametrize("vhost_vsock, daemon, templated, kind", [
    (True, True, False, VSOCK),  # production hosts: vhost-vsock first
    (True, False, True, VSOCK),
    (False, True, False, HVSOCK),  # these hosts: the daemon serves hybrid vsock
    (False, True, True, SERIAL),  # templates: QEMU cannot migrate vhost-user-vsock
    (False, False, False, SERIAL),
    (False, False, True, SERIAL),
])
def test_auto(host, vhost_vsock, daemon, templated, kind):
    host.update(vhost_vsock=vhost_vsock, daemon=daemon)
    choice = choose("auto", DAEMON, templated=templated)
    assert choice.kind == kind
    if not vhost_vsock:
        assert "no usable /dev/vhost-vsock" in choice.reason
        why = {(True, False): DAEMON, (True, True): "cannot migrate",
               (False, False): "no vhost-device-vsock", (False, True): "cannot migrate"}
        assert why[daemon, templated] in choice.reason


@pytest.mark.parametrize("transport", ["serial", "vsock", "hvsock"])
def test_a_configured_transport_is_taken_as_it_is(host, transport):
    assert choose(transport, "", templated=False).kind == transport


def test_configured_hvsock_with_templates_is_serial(host):
    choice = choose("hvsock", DAEMON, templated=True)
    assert choice.kind == SERIAL and "cannot migrate" in choice.reason
    with pytest.raises(ValueError):
        choose("virtio-vsock", DAEMON, templated=False)


def test_a_config_that_names_a_template_is_templated(host):
    host.update(daemon=True)
    config = VMConfig(vhost_vsock_daemon=DAEMON, agent_transport="hvsock")
    assert for_config(config).kind == HVSOCK == channel_kind(config)
    config.template_path = "/run/pykata-factory/template"
    assert for_config(config).kind == SERIAL == channel_kind(config)
    assert channel_kind(config, templated=False) == HVSOCK
    # no daemon path (VMConfig's default): never hybrid vsock by itself
    assert for_config(VMConfig()).kind == SERIAL


def test_daemon_installed(tmp_path):
    daemon = tmp_path / "vhost-device-vsock"
    assert not channel.daemon_installed(str(daemon)) and not channel.daemon_installed("")
    daemon.write_text("#!/bin/sh\n")
    assert not channel.daemon_installed(str(daemon))  # not executable
    daemon.chmod(0o755)
    assert channel.daemon_installed(str(daemon))


def test_config_keys():
    config = parse_config('[hypervisor.qemu]\nagent_transport = "hvsock"\n'
                          'vhost_user_vsock_daemon = "/opt/vsock"\n')
    assert config.hypervisor.agent_transport == "hvsock"
    from shim.sandbox.sandbox import vm_config

    vm = vm_config(config, None)
    assert (vm.agent_transport, vm.vhost_vsock_daemon) == ("hvsock", "/opt/vsock")
    assert parse_config("").hypervisor.agent_transport == "auto"
    with pytest.raises(ConfigError, match="agent_transport"):
        parse_config('[hypervisor.qemu]\nagent_transport = "virtio-vsock"\n')


def test_check_and_env_say_which_channel_a_pod_gets(host, tmp_path, capsys):
    from shim.admin import host as admin_host

    host.update(daemon=True)
    path = tmp_path / "configuration.toml"
    path.write_text(f'[hypervisor.qemu]\nagent_transport = "hvsock"\n'
                    f'vhost_user_vsock_daemon = "{DAEMON}"\n')
    lines = {f.name: f for f in admin_host.findings(str(path))}
    assert lines["agent channel"].detail.startswith("hybrid vsock (vhost-user-vsock)")
    assert admin_host.env(argparse.Namespace(config=str(path), json=True)) == 0
    out = capsys.readouterr().out
    document = json.loads(out[out.index("\n{\n") + 1:])  # after the probes' log lines
    assert document["agent_channel"]["transport"] == "hvsock"
    path.write_text(f'[hypervisor.qemu]\nagent_transport = "hvsock"\n'
                    f'vhost_user_vsock_daemon = "{DAEMON}"\n'
                    '[factory]\nenable_template = true\n')
    lines = {f.name: f for f in admin_host.findings(str(path))}
    assert lines["agent channel"].detail.startswith("virtio-serial")


def test_check_requires_the_daemon_only_when_hvsock_is_configured(host, tmp_path):
    from shim.admin import host as admin_host

    path = tmp_path / "configuration.toml"
    path.write_text(f'[hypervisor.qemu]\nvhost_user_vsock_daemon = "{tmp_path}/none"\n')
    assert "vhost-device-vsock" not in {f.name for f in admin_host.findings(str(path))}
    path.write_text(f'[hypervisor.qemu]\nagent_transport = "hvsock"\n'
                    f'vhost_user_vsock_daemon = "{tmp_path}/none"\n')
    found = {f.name: f for f in admin_host.findings(str(path))}
    assert found["vhost-device-vsock"].status == admin_host.FAIL

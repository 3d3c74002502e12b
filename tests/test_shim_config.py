"""Configuration search order and validation."""

import pytest

from shim.config import Config, ConfigError, find_config_file, load_config, parse_config

DEFAULTS = "shim/defaults/configuration.toml"


def test_shipped_default_file_parses_to_the_built_in_defaults():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    parsed = parse_config((root / DEFAULTS).read_text(), "defaults")
    assert parsed.hypervisor == Config().hypervisor
    assert parsed.agent == Config().agent
    assert parsed.runtime == Config().runtime


def test_kata_key_names_are_read():
    config = parse_config(
        """
        [hypervisor.qemu]
        path = "/opt/qemu"
        default_vcpus = 2
        default_memory = 1024
        enable_debug = true
        unknown_kata_key = "ignored"
        [runtime]
        internetworking_model = "none"
        create_container_timeout = 300
        """
    )
    assert config.hypervisor.path == "/opt/qemu"
    assert (config.hypervisor.default_vcpus, config.hypervisor.default_memory) == (2, 1024)
    assert config.hypervisor.enable_debug is True
    assert config.runtime.internetworking_model == "none"
    assert config.runtime.create_container_timeout == 300


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[hypervisor.qemu]\ndefault_vcpus = 'two'", "must be a number"),
        ("[hypervisor.qemu]\nenable_debug = 1", "true or false"),
        ("[hypervisor.qemu]\nshared_fs = 'nfs'", "expected one of virtio-fs, none"),
        ("[runtime]\ninternetworking_model = 'bridge'", "expected one of tcfilter"),
        ("[hypervisor.qemu]\ndefault_memory = 16", "default_memory >= 64"),
        ("[hypervisor.qemu]\ntcg_cache_size = -1", "tcg_cache_size must be 0"),
        ("[hypervisor.qemu]\nimage = ''\ninitrd = ''", "neither image nor initrd"),
        ("[hypervisor.qemu]\ntcg_cache_size = 99999", "tcg_cache_size must be 0"),
        ("not toml [", "x.toml"),
    ],
)
def test_bad_values_name_the_key(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(text, "x.toml")


def test_search_order(tmp_path, monkeypatch):
    option_file = tmp_path / "option.toml"
    env_file = tmp_path / "env.toml"
    option_file.write_text("[hypervisor.qemu]\ndefault_vcpus = 3\n")
    env_file.write_text("[hypervisor.qemu]\ndefault_vcpus = 4\n")
    monkeypatch.setenv("PYKATA_CONF_FILE", str(env_file))
    assert find_config_file(str(option_file)) == option_file
    assert load_config(str(option_file)).hypervisor.default_vcpus == 3
    assert load_config().hypervisor.default_vcpus == 4
    monkeypatch.setenv("PYKATA_CONF_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config()


def test_debug_console_key_reaches_the_vm_config():
    from shim.sandbox.sandbox import vm_config

    assert Config().agent.debug_console_enabled is False
    assert vm_config(Config(), None).debug_console is False
    config = parse_config("[agent.kata]\ndebug_console_enabled = true\n")
    assert config.agent.debug_console_enabled is True
    assert vm_config(config, None).debug_console is True
    with pytest.raises(ConfigError, match="debug_console_enabled must be true or false"):
        parse_config("[agent.kata]\ndebug_console_enabled = 'yes'\n", "x.toml")


def test_tcg_cache_size_reaches_the_vm_config():
    from shim.sandbox.sandbox import vm_config

    assert vm_config(Config(), None).tcg_cache_mib == 0
    config = parse_config("[hypervisor.qemu]\ntcg_cache_size = 48\n")
    assert vm_config(config, None).tcg_cache_mib == 48

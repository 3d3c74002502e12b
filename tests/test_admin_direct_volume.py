"""direct-volume add|remove|stats|resize: Kata's mountInfo.json layout, and the shim asked."""

from __future__ import annotations

import base64
import json
import stat

import pytest
import test_admin_fakes as fakes

from shim import direct_volume
from shim.admin import run

node = fakes.node  # fixtures
short_tmp = fakes.short_tmp

VOLUME = "/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~csi/pvc-1/mount"
MOUNT_INFO = {
    "volume-type": "block",
    "device": "/dev/sdb",
    "fstype": "ext4",
    "metadata": {"fsGroup": "2000"},
    "options": ["rw", "noatime"],
}


def test_add_writes_katas_layout(node):
    text = json.dumps(MOUNT_INFO)
    assert run(["direct-volume", "add", "--volume-path", VOLUME, "--mount-info", text]) == 0
    name = base64.urlsafe_b64encode(VOLUME.encode()).decode()
    directory = node.root / "direct-volumes" / name
    assert direct_volume.volume_dir(VOLUME) == directory
    assert (directory / "mountInfo.json").read_text() == text  # stored as given
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "mountInfo.json").stat().st_mode) == 0o600
    info = direct_volume.mount_info(VOLUME)
    assert (info.volume_type, info.device, info.fstype) == ("block", "/dev/sdb", "ext4")
    assert info.metadata == {"fsGroup": "2000"} and info.options == ["rw", "noatime"]


def test_the_directory_name_is_padded_url_safe_base64():
    # Go's base64.URLEncoding: '-' and '_' for '+' and '/', '=' padding kept
    assert direct_volume.encode("/a?b>") == "L2E_Yj4="
    assert direct_volume.encode("/mnt/x~") == "L21udC94fg=="


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[1]", "must be a JSON object"),
        ('{"device": 3}', "'device' must be a string"),
        ('{"metadata": {"a": 1}}', "'metadata' must map strings to strings"),
        ('{"options": "rw"}', "'options' must be a list of strings"),
    ],
)
def test_add_refuses_bad_mount_info(node, capsys, text, message):
    assert run(["direct-volume", "add", "--volume-path", VOLUME, "--mount-info", text]) == 1
    assert message in capsys.readouterr().err
    assert not (node.root / "direct-volumes").exists()


def test_add_refuses_a_file_in_the_way(node, capsys):
    directory = direct_volume.volume_dir(VOLUME)
    directory.parent.mkdir(parents=True)
    directory.write_text("")
    assert run(["direct-volume", "add", "--volume-path", VOLUME, "--mount-info", "{}"]) == 1
    assert "should be a directory" in capsys.readouterr().err


def test_remove_forgets_the_volume_and_its_sandbox(node):
    direct_volume.add(VOLUME, json.dumps(MOUNT_INFO))
    direct_volume.record_sandbox("pod1", VOLUME)
    assert run(["direct-volume", "remove", "--volume-path", VOLUME]) == 0
    assert not direct_volume.volume_dir(VOLUME).exists()
    assert run(["direct-volume", "remove", "--volume-path", VOLUME]) == 0  # nothing left: fine


def test_record_sandbox_needs_mount_info_and_a_valid_id(node):
    with pytest.raises(direct_volume.DirectVolumeError, match="no mount info"):
        direct_volume.record_sandbox("pod1", VOLUME)
    direct_volume.add(VOLUME, "{}")
    with pytest.raises(direct_volume.DirectVolumeError, match="sandbox id"):
        direct_volume.record_sandbox("../x", VOLUME)
    direct_volume.record_sandbox("pod1", VOLUME)
    assert (direct_volume.volume_dir(VOLUME) / "pod1").read_bytes() == b""
    assert direct_volume.sandbox_for(VOLUME) == "pod1"


def test_stats_asks_the_sandbox_that_uses_the_volume(node, capsys):
    fake = node.serve("pod1")
    volume = VOLUME + "/with space&amp"
    direct_volume.add(volume, json.dumps(MOUNT_INFO))
    direct_volume.record_sandbox("pod1", volume)
    assert run(["direct-volume", "stats", "--volume-path", volume]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["used"] == 4096 and out.endswith("\n")
    assert fake.stats_paths == [volume]


def test_resize_posts_the_volume_path_and_size(node):
    fake = node.serve("pod1")
    direct_volume.add(VOLUME, json.dumps(MOUNT_INFO))
    direct_volume.record_sandbox("pod1", VOLUME)
    assert run(["direct-volume", "resize", "--volume-path", VOLUME, "--size", "2147483648"]) == 0
    assert fake.resizes == [{"volumePath": VOLUME, "size": 2147483648}]


def test_stats_and_resize_without_a_sandbox(node, capsys):
    assert run(["direct-volume", "stats", "--volume-path", VOLUME]) == 1
    assert "was not added" in capsys.readouterr().err
    direct_volume.add(VOLUME, json.dumps(MOUNT_INFO))
    assert run(["direct-volume", "resize", "--volume-path", VOLUME, "--size", "1"]) == 1
    assert "no sandbox found for" in capsys.readouterr().err
    direct_volume.record_sandbox("pod9", VOLUME)  # recorded, but no such sandbox any more
    assert run(["direct-volume", "stats", "--volume-path", VOLUME]) == 1
    assert "no sandbox 'pod9'" in capsys.readouterr().err


def test_resize_refuses_a_negative_size(node, capsys):
    with pytest.raises(SystemExit):
        run(["direct-volume", "resize", "--volume-path", VOLUME, "--size", "-1"])
    assert "cannot be negative" in capsys.readouterr().err

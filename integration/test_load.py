"""The short CI version of bench/load_bench.py: pods at once and `ctr run --rm` cycles in a
row, each with its own output and address, and nothing left behind (processes, mounts,
taps, tc filters, state dirs, shim sockets)."""

from __future__ import annotations

import pytest

from integration.load_env import run_load
from integration.pykata_env import ensure_guest_assets, ensure_shim_on_path

pytestmark = pytest.mark.integration
PODS_AT_ONCE = 3
CYCLES = 5


def test_pods_at_once_then_cycles_in_a_row_leak_nothing(containerd, busybox_image, tmp_path):
    ensure_shim_on_path()
    ensure_guest_assets()
    report, left = run_load(containerd, busybox_image, pods=PODS_AT_ONCE, cycle_count=CYCLES,
                            workdir=tmp_path)
    for run in report.pods_at_once + report.cycles:
        assert run.correct(), f"pod {run.index}: {run.returncode} {run.stdout!r} {run.stderr}"
    assert len(report.pods_at_once) == PODS_AT_ONCE and len(report.cycles) == CYCLES
    assert report.peak_vms == PODS_AT_ONCE, "the pods ran at the same time"
    assert report.peak_pss_mib > 0
    assert left == {}, f"left behind: {left}"
    print(f"{PODS_AT_ONCE} at once: {report.at_once_seconds:.1f} s; cycles: "
          f"{report.cycle_seconds()}; peak PSS {report.peak_pss_mib:.0f} MiB")

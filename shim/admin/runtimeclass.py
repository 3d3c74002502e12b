"""A Kubernetes RuntimeClass whose overhead.podFixed comes from a measurement.

podFixed = measured * (1 + margin), rounded up: memory to whole MiB (`Mi`), CPU
to whole millicores (`m`, at least 1m). The YAML opens with comment lines saying
what was measured, so the numbers can be traced back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from shim.admin.measure import Measurement

MIB = 1 << 20
RUNTIME_CLASS = "pykata"
HANDLER = "pykata"  # containerd's runtimes.pykata


def _round_up(value: float) -> int:
    # round first: 100 MiB + 10 % is 110.00000000000001 MiB in floats, and that is 110Mi
    return max(math.ceil(round(value, 6)), 1)


def memory_quantity(memory_bytes: float, margin_percent: float) -> str:
    """Bytes plus the margin, rounded up to MiB: "187Mi" (never 0Mi)."""
    return f"{_round_up(memory_bytes * (1 + margin_percent / 100) / MIB)}Mi"


def cpu_quantity(cores: float, margin_percent: float) -> str:
    """CPUs plus the margin, rounded up to millicores: "35m" (never 0m)."""
    return f"{_round_up(cores * (1 + margin_percent / 100) * 1000)}m"


def _mib(value: int) -> str:
    return f"{value / MIB:.1f} MiB"


def describe(measurement: Measurement, margin_percent: float) -> list[str]:
    """The comment lines: per-role memory, CPU, and how podFixed was derived."""
    kinds = "/".join(sorted(measurement.memory_kinds))
    parts = " + ".join(f"{role} {_mib(b)}" for role, b in measurement.memory_by_role().items())
    return [
        f"measured over {measurement.seconds:.1f} s, {measurement.samples} memory samples",
        f"memory ({kinds}, peak of the total): {parts} = {_mib(measurement.memory_bytes)}",
        f"cpu (utime+stime / wall time): {measurement.cpu_cores:.3f} CPU",
        f"podFixed = measured + {margin_percent:g}% margin, rounded up to Mi and m",
    ]


def runtime_class_yaml(
    measurement: Measurement,
    margin_percent: float = 10.0,
    *,
    name: str = RUNTIME_CLASS,
    handler: str = HANDLER,
    notes: Sequence[str] = (),
) -> str:
    """The RuntimeClass document, comments first (`notes`: lines saying what was measured)."""
    comments = ["pykata pod overhead, from a measurement", *notes]
    comments += describe(measurement, margin_percent)
    memory = memory_quantity(measurement.memory_bytes, margin_percent)
    cpu = cpu_quantity(measurement.cpu_cores, margin_percent)
    lines = [f"# {line}" for line in comments] + [
        "apiVersion: node.k8s.io/v1",
        "kind: RuntimeClass",
        "metadata:",
        f"  name: {name}",
        f"handler: {handler}",
        "overhead:",
        "  podFixed:",
        f'    memory: "{memory}"',
        f'    cpu: "{cpu}"',
    ]
    return "\n".join(lines) + "\n"

#!/usr/bin/env python3
"""Cold import cost of modules on the shim's hot paths (median of N fresh interpreters).

    python3 bench/import_cost.py [--runs 9] [module ...]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODULES = ["ttrpc", "ttrpc.client", "ttrpc.server"]


def import_seconds(module: str) -> float:
    """Seconds `import module` takes in a new interpreter (start-up excluded)."""
    code = (
        "import time; t = time.perf_counter(); "
        f"import {module}; "
        "print(time.perf_counter() - t)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("modules", nargs="*", default=DEFAULT_MODULES)
    options = parser.parse_args()
    print(f"{'module':<24} {'median ms':>10} {'min ms':>8}")
    for module in options.modules:
        times = [import_seconds(module) for _ in range(options.runs)]
        print(f"{module:<24} {statistics.median(times) * 1e3:>10.1f} {min(times) * 1e3:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

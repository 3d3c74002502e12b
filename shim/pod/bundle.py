"""A container's bundle as the daemon reads it: config.json, checked before any VM exists."""

from __future__ import annotations

import json
import os
from typing import Any

from shim.paths import SPEC_FILE
from shim.spec_support import SpecError

MAX_SPEC_BYTES = 2 << 20  # an agent message (a ttrpc frame) holds at most 4 MiB


def read_container_spec(bundle: str) -> dict[str, Any]:
    """The bundle's config.json; SpecError for one the shim cannot rely on (missing,
    too large for one agent message, not JSON, not a container spec)."""
    path = os.path.join(bundle, SPEC_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"no config.json in bundle {bundle}") from None
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(
            f"{path} is larger than {MAX_SPEC_BYTES >> 20} MiB: the spec must reach the guest "
            "in one agent message; trim its env, annotations or mounts"
        )
    try:
        spec = json.loads(data)
    except ValueError as exc:
        raise SpecError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise SpecError(f"{path} must hold a JSON object")
    for key in ("process", "root"):
        if not isinstance(spec.get(key), dict):
            raise SpecError(f"{path} has no {key!r} object: not a container spec")
    return spec

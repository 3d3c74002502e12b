"""protobuf Timestamps of the Task and Sandbox APIs, from nanoseconds since the epoch."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp(ns: int) -> Timestamp:
    """A Timestamp of `ns` (0, a time not known yet, is the zero Timestamp)."""
    stamp = Timestamp()
    stamp.FromNanoseconds(ns)
    return stamp


def timestamp_now() -> Timestamp:
    """The current time as a Timestamp."""
    return timestamp(time.time_ns())

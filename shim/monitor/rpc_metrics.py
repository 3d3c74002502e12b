"""RPC duration histograms: the Task API the shim serves, and its calls to the agent.

Kata's families: `kata_shim_rpc_durations_histogram_milliseconds` with
action = the Task method in snake case ("create", "close_io", "resize_pty"), and
`kata_shim_agent_rpc_durations_histogram_milliseconds` with action = the
request message's full name ("grpc.CreateContainerRequest"); both in
milliseconds with buckets 1, 2, 4 ... 512. Kata truncates each duration to whole
milliseconds; this keeps the fraction (the same unit, finer).

`RpcMetrics.observe_task` and `observe_agent` have the shape of the ttrpc
observer hooks: `ttrpc.Server(observer=...)`, `ttrpc.Client(observer=...)`.
Everything runs on the event loop thread; an observation is a dict look-up, a
bisect and three additions.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pykata_common.exposition import Family

BUCKETS_MS: tuple[float, ...] = tuple(float(2**i) for i in range(10))  # 1 .. 512
TASK_FAMILY = "kata_shim_rpc_durations_histogram_milliseconds"
AGENT_FAMILY = "kata_shim_agent_rpc_durations_histogram_milliseconds"
MAX_ACTIONS = 256  # a bound on label values, whatever the callers pass

_WORD_START = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_snake_cache: dict[str, str] = {}


def task_action(method: str) -> str:
    """Kata's action label for a shim API method: CloseIO -> close_io."""
    action = _snake_cache.get(method)
    if action is None:
        action = _snake_cache[method] = _WORD_START.sub("_", method).lower()
    return action


def request_names(services: Iterable[Any]) -> dict[tuple[str, str], str]:
    """(service, method) -> the request message's full name, from ServiceDescriptors.

    Kata labels agent calls by request type, which is not always the method's
    name (Version takes a CheckRequest, WriteStdin a WriteStreamRequest).
    """
    names: dict[tuple[str, str], str] = {}
    for service in services:
        for method in service.methods:
            names[(service.full_name, method.name)] = method.input_type.full_name
    return names


class DurationHistogram:
    """One histogram family, a series per action."""

    def __init__(self, name: str, help: str, bounds: Sequence[float] = BUCKETS_MS) -> None:
        self.name = name
        self.help = help
        self.bounds = tuple(bounds)
        # action -> [per-bucket counts..., overflow count, sum in ms]
        self._series: dict[str, list[float]] = {}

    def observe(self, action: str, seconds: float) -> None:
        """Record one call of `action` that took `seconds`."""
        series = self._series.get(action)
        if series is None:
            if len(self._series) >= MAX_ACTIONS:
                return
            series = self._series[action] = [0] * (len(self.bounds) + 1) + [0.0]
        ms = seconds * 1000.0
        series[bisect_left(self.bounds, ms)] += 1  # le: a value equal to a bound is in it
        series[-1] += ms

    def count(self, action: str) -> int:
        """How many calls of `action` were recorded."""
        series = self._series.get(action)
        return int(sum(series[:-1])) if series else 0

    def family(self) -> Family | None:
        """The family now, or None before the first observation (as Kata shows it)."""
        if not self._series:
            return None
        family = Family(self.name, self.help, "histogram")
        for action, series in sorted(self._series.items()):
            counts = [int(c) for c in series[:-1]]
            family.add_histogram(self.bounds, counts, series[-1], (("action", action),))
        return family


class RpcMetrics:
    """The shim's two RPC histograms and the observer callbacks that feed them."""

    def __init__(self, agent_requests: Mapping[tuple[str, str], str] | None = None) -> None:
        self.task = DurationHistogram(TASK_FAMILY, "Duration of the shim API calls served, in ms.")
        self.agent = DurationHistogram(AGENT_FAMILY, "Duration of the calls to the agent, in ms.")
        self._agent_requests = dict(agent_requests or {})

    def observe_task(self, service: str, method: str, seconds: float, code: int) -> None:
        """ttrpc server observer: one served call (any status)."""
        self.task.observe(task_action(method), seconds)

    def observe_agent(self, service: str, method: str, seconds: float, code: int) -> None:
        """ttrpc client observer: one agent call (any status)."""
        action = self._agent_requests.get((service, method)) or f"{service}.{method}"
        self.agent.observe(action, seconds)

    def families(self) -> list[Family]:
        """The histograms that have observations."""
        return [f for f in (self.task.family(), self.agent.family()) if f is not None]

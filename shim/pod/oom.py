"""Guest OOM events, bounded: GetOOMEvent answers are the guest's to forge.

A guest may answer the long poll as fast as it can. Two limits keep that cheap
for the host: the poll is paced (a token bucket: OOM_POLL_BURST polls at once,
then OOM_POLL_RATE a second), and at most one /tasks/oom per container per
OOM_EVENT_INTERVAL is passed on (CRI only needs to know that a container was
OOM-killed, not how often); the rest are counted, and logged at most once per
LOG_INTERVAL per container.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

import structlog

log = structlog.get_logger(__name__)
OOM_EVENT_INTERVAL = 1.0  # seconds between two events of one container
OOM_POLL_RATE = 20.0  # GetOOMEvent polls a second, once the burst is spent
OOM_POLL_BURST = 20
LOG_INTERVAL = 60.0  # seconds between two "dropped" lines of one container

Clock = Callable[[], float]


class PollPacer:
    """A token bucket for the poll: `delay()` says how long to wait before the next one."""

    def __init__(
        self, rate: float | None = None, burst: int | None = None, clock: Clock = time.monotonic
    ) -> None:
        self._rate = OOM_POLL_RATE if rate is None else rate
        self._burst = float(OOM_POLL_BURST if burst is None else burst)
        self._clock = clock
        self._tokens = self._burst
        self._last = clock()

    def delay(self) -> float:
        """Take one poll; the seconds to wait before making it (0: at once)."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


class OomGate:
    """Passes at most one OOM event per container per interval; counts the others."""

    def __init__(self, interval: float | None = None, clock: Clock = time.monotonic) -> None:
        self._interval = OOM_EVENT_INTERVAL if interval is None else interval
        self._clock = clock
        self._passed: dict[str, float] = {}  # container -> when its last event was passed
        self._dropped: dict[str, int] = {}  # container -> events dropped (all time)
        self._logged: dict[str, float] = {}  # container -> when a drop was last logged
        self.dropped = 0  # all containers
        self.unknown = 0  # events naming no container of the pod

    def allow(self, container_id: str) -> bool:
        """Whether this event of a known container is passed on."""
        now = self._clock()
        last = self._passed.get(container_id)
        if last is None or now - last >= self._interval:
            self._passed[container_id] = now
            return True
        self.dropped += 1
        count = self._dropped[container_id] = self._dropped.get(container_id, 0) + 1
        logged = self._logged.get(container_id)
        if logged is None or now - logged >= LOG_INTERVAL:
            self._logged[container_id] = now
            log.warning(
                "OOM events come faster than one a second: the others are dropped",
                container=container_id,
                dropped=count,
            )
        return False

    def ignore_unknown(self, container_id: str) -> None:
        """An event for no container of the pod (a forged or stale id): counted only."""
        self.unknown += 1
        log.debug("OOM event for an unknown container ignored", container=container_id[:80])

    def retain(self, known: Collection[str]) -> None:
        """Forget the containers that are gone (keeps the maps as small as the pod)."""
        for table in (self._passed, self._dropped, self._logged):
            for container_id in [c for c in table if c not in known]:
                del table[container_id]

"""One sandbox's network: scan and wire the pod netns before QEMU starts, tell the agent
after it answers, undo at the end. pyroute2 work runs in a thread (its sync API runs an
event loop of its own, and nothing here should stall the shim's loop), a new thread
each time, since it enters the pod netns (see nsenter)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

import ttrpc
from shim.netns.apply import NetworkSetupError, apply_plan, close_fds
from shim.netns.guest import GuestNetwork, guest_network
from shim.netns.journal import Journal
from shim.netns.model import Model, NetnsScan, NetworkPlan
from shim.netns.nsenter import in_own_thread
from shim.netns.plan import build_plan, fallbacks, marker, nic_specs

if TYPE_CHECKING:
    from shim.guest_agent import GuestAgent

log = structlog.get_logger(__name__)
VHOST_NET = "/dev/vhost-net"
NIC_WAIT = 10.0  # seconds the guest may take to show a NIC (NOT_FOUND is retried)


class PodNetwork:
    """The plan carried out in the pod netns, the NICs for QEMU and the guest's view."""

    def __init__(
        self,
        plan: NetworkPlan,
        guest: GuestNetwork,
        fds: dict[str, list[int]],
    ) -> None:
        self.plan = plan
        self.guest = guest
        self.fds = fds

    @property
    def nics(self) -> list[Any]:
        """shim.vmm NicSpec list for VMConfig.nics."""
        return nic_specs(self.plan, self.fds)

    def release_fds(self) -> None:
        """Close our copies of the macvtap queues (QEMU inherited its own at launch)."""
        for fds in self.fds.values():
            close_fds(fds)
        self.fds = {}

    async def configure_guest(self, agent: GuestAgent) -> None:
        """UpdateInterface for each NIC, then UpdateRoutes and AddARPNeighbors."""
        if self.guest.empty:
            return
        t0 = time.monotonic()
        for iface in [*self.guest.renames, *self.guest.interfaces]:
            await _update_interface(agent, iface)
        if self.guest.routes:
            await _call(agent.update_routes(list(self.guest.routes)), "UpdateRoutes")
        if self.guest.neighbors:
            await _call(agent.add_arp_neighbors(list(self.guest.neighbors)), "AddARPNeighbors")
        log.info(
            "guest network configured",
            interfaces=[f"{i.name} {i.hwAddr} mtu {i.mtu}" for i in self.guest.interfaces],
            routes=len(self.guest.routes),
            neighbors=len(self.guest.neighbors),
            seconds=round(time.monotonic() - t0, 3),
        )


async def _call(call: Awaitable[None], what: str) -> None:
    try:
        await call
    except ttrpc.TTRPCError as exc:
        raise NetworkSetupError(f"agent {what} failed: {exc}") from exc


async def _update_interface(agent: GuestAgent, iface: Any) -> None:
    deadline = time.monotonic() + NIC_WAIT
    while True:
        try:
            await agent.update_interface(iface)
            return
        except ttrpc.TTRPCError as exc:
            if exc.code != ttrpc.Code.NOT_FOUND or time.monotonic() > deadline:
                raise NetworkSetupError(
                    f"agent UpdateInterface {iface.name} ({iface.hwAddr}) failed: {exc}"
                ) from exc
            await asyncio.sleep(0.1)


def _log_plan(plan: NetworkPlan, seconds: float) -> None:
    for note in plan.notes:
        log.info(note, netns=plan.netns)
    for skipped in plan.skipped:
        log.warning(
            f"skipping interface {skipped.name}: {skipped.reason}",
            interface=skipped.name,
            kind=skipped.kind,
            netns=plan.netns,
        )
    for name in fallbacks(plan):
        log.warning(f"{name} cannot carry a macvtap: using tcfilter for it", interface=name)
    if plan.endpoints:
        log.info(
            "pod network wired",
            netns=plan.netns,
            model=plan.model,
            nics=[
                f"{ep.link.name}({ep.link.kind} {ep.mac} mtu {ep.mtu}) -> {ep.device}"
                f"({ep.mode}, queues {ep.queues}{', vhost' if ep.vhost else ''})"
                for ep in plan.endpoints
            ],
            seconds=round(seconds, 3),
        )


def _setup_sync(
    model: Model, netns: str, state_dir: Path, sandbox_id: str, vcpus: int
) -> tuple[NetworkPlan, NetnsScan, dict[str, list[int]]]:
    from shim.netns.nsenter import open_netns
    from shim.netns.scan import scan

    with open_netns(netns) as ipr:
        scanned = scan(ipr, netns)
        plan = build_plan(
            scanned,
            model,
            marker=marker(sandbox_id),
            vcpus=vcpus,
            vhost_net=os.path.exists(VHOST_NET),
        )
        if plan.empty:
            return plan, scanned, {}
        journal = Journal.create(state_dir, netns, plan.marker, model)
        return plan, scanned, apply_plan(ipr, plan, journal)


async def setup(
    *, model: Model, netns: str | None, state_dir: Path, sandbox_id: str, vcpus: int = 1
) -> PodNetwork:
    """Scan the pod netns and add the taps/macvtaps and filters of the plan.

    On failure whatever was added stays journaled: the caller's teardown undoes it."""
    t0 = time.monotonic()
    scanned: NetnsScan | None = None
    fds: dict[str, list[int]] = {}
    if netns is None or model == "none":
        plan = build_plan(None if netns is None else NetnsScan(netns), model, marker="")
    else:
        plan, scanned, fds = await in_own_thread(
            _setup_sync, model, netns, Path(state_dir), sandbox_id, vcpus
        )
    _log_plan(plan, time.monotonic() - t0)
    return PodNetwork(plan, guest_network(plan, scanned), fds)


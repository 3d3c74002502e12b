"""GetIPTables / SetIPTables: iptables-save and iptables-restore in the guest.

As Kata's agent: Get answers what `iptables-save` (`ip6tables-save` for
is_ipv6) prints; Set feeds the request's data to `iptables-restore --wait 5`
on its stdin and answers what it prints, or INTERNAL with its stderr when it
fails. The guest image carries iptables-nft (Debian's default `iptables`);
the kernel loads the nf_tables modules the rules need on first use.
"""

from __future__ import annotations

from agent.children import Completed, Reaper, run, which
from ttrpc.codes import Code
from ttrpc.errors import TTRPCError

RESTORE_WAIT = 5  # s: iptables-restore --wait, as Kata's agent passes it
TIMEOUT = 30.0  # s for one command before it is killed


def command(is_ipv6: bool, action: str) -> str:
    """The program's name: iptables-save, ip6tables-restore, ..."""
    return f"{'ip6tables' if is_ipv6 else 'iptables'}-{action}"


def binary(name: str) -> str:
    """Path of `name` on PATH, or FAILED_PRECONDITION saying the image lacks it."""
    path = which(name)
    if path is None:
        raise TTRPCError(Code.FAILED_PRECONDITION, f"{name} not found in the guest image")
    return path


async def _run(reaper: Reaper, name: str, argv: list[str], data: bytes | None) -> bytes:
    try:
        done: Completed = await run(reaper, argv, input=data, timeout=TIMEOUT)
    except TimeoutError as exc:
        raise TTRPCError(Code.DEADLINE_EXCEEDED, str(exc)) from None
    except OSError as exc:
        raise TTRPCError(Code.INTERNAL, f"{name}: {exc.strerror or exc}") from None
    if done.status != 0:
        raise TTRPCError(Code.INTERNAL, f"{name} failed: {done.error_text}")
    return done.stdout


async def save(reaper: Reaper, is_ipv6: bool) -> bytes:
    """The guest's rules, as iptables-save prints them."""
    name = command(is_ipv6, "save")
    return await _run(reaper, name, [binary(name)], None)


async def restore(reaper: Reaper, is_ipv6: bool, data: bytes) -> bytes:
    """Load rules with iptables-restore; returns what it printed."""
    name = command(is_ipv6, "restore")
    return await _run(reaper, name, [binary(name), "--wait", str(RESTORE_WAIT)], data)

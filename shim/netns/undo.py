"""Undo what network.json says we added to a pod netns, and nothing else.

A device is deleted only if it carries our ifalias marker (or, made but not yet
marked when the shim died, has the recorded name, kind and ifindex); a qdisc or
filter only on the interface index and name we recorded. A netns that is gone, or
whose path now names another netns, is left alone.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from shim.netns.journal import STATE_FILE, Journal, netns_id

GONE = {errno.ENODEV, errno.ENOENT, errno.EINVAL, errno.ESRCH}


def _code(exc: Exception) -> int | None:
    return getattr(exc, "code", None) or getattr(exc, "errno", None)


def _links(ipr: Any) -> dict[int, tuple[str, str, str]]:
    """ifindex -> (name, kind, alias)."""
    found = {}
    for msg in ipr.get_links():
        info = msg.get_attr("IFLA_LINKINFO")
        kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
        found[msg["index"]] = (
            msg.get_attr("IFLA_IFNAME") or "",
            kind,
            msg.get_attr("IFLA_IFALIAS") or "",
        )
    return found


def _ours(entry: dict[str, Any], index: int, kind: str, alias: str, marker: str) -> bool:
    if kind != entry["kind"]:
        return False
    if alias == marker:
        return True
    return not alias and entry.get("ifindex") in (None, index)


def _undo(ipr: Any, journal: Journal) -> list[str]:
    from shim.netns.model import ETH_P_ALL  # here: `delete` with nothing to undo skips it

    done: list[str] = []
    links = _links(ipr)
    by_name = {name: index for index, (name, _, _) in links.items()}
    for entry in reversed(journal.entries):
        op = entry.get("op")
        try:
            if op == "link":
                index = by_name.get(entry["name"])
                if index is None:
                    continue
                _, kind, alias = links[index]
                if not _ours(entry, index, kind, alias, journal.marker):
                    done.append(f"left {entry['name']} alone: not ours ({kind}, {alias!r})")
                    continue
                ipr.link("del", index=index)
                done.append(f"deleted {kind} {entry['name']}")
            elif op in ("qdisc", "filter"):
                index = entry["ifindex"]
                if links.get(index, ("",))[0] != entry["ifname"]:
                    continue  # the interface is gone (or was replaced)
                if op == "qdisc":
                    ipr.tc("del", "ingress", index, "ffff:")
                    done.append(f"deleted the ingress qdisc of {entry['ifname']}")
                elif not entry.get("own_qdisc"):
                    ipr.tc(
                        "del-filter",
                        "u32",
                        index,
                        parent=entry["parent"],
                        prio=entry["prio"],
                        protocol=ETH_P_ALL,
                        target=0x1,  # pyroute2's u32 wants one; a prio-wide delete ignores it
                    )
                    done.append(f"deleted the redirect filter of {entry['ifname']}")
        except Exception as exc:
            if _code(exc) not in GONE:
                raise
    return done


def undo_journal(journal: Journal) -> list[str]:
    """Undo a journal's changes; one line per action. Removes network.json when done."""
    if not journal.entries:
        journal.remove()
        return []
    if not os.path.exists(journal.netns):
        journal.remove()
        return [f"{journal.netns} is gone: nothing to undo"]
    try:
        same = netns_id(journal.netns) == journal.netns_id
    except OSError:
        same = False
    if not same:
        journal.remove()
        return [f"{journal.netns} names another network namespace now: left alone"]
    from shim.netns.nsenter import open_netns

    with open_netns(journal.netns) as ipr:
        done = _undo(ipr, journal)
    journal.remove()
    return done


def teardown_state(state_dir: Path | str) -> list[str]:
    """Undo what <state_dir>/network.json records; pyroute2 is imported only when it
    records something. The daemon and `delete` (after a crash) both call this."""
    journal = Journal.load(state_dir)
    if journal is None:
        (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
        return []
    return undo_journal(journal)

"""The agent's GetMetrics text, made safe to re-serve under the host's labels.

The guest writes this text, so it is read as a peer's, never as the host's:

* bounded: a text over MAX_TEXT characters is dropped whole; at most MAX_FAMILIES
  families and MAX_SAMPLES samples are kept, the rest dropped (each logged);
* named: go_* and process_* become kata_agent_* (as Kata does), and only
  kata_agent_* and kata_guest_* families are kept, so none shadows a host family;
* labelled: a label the host puts on every sample (HOST_LABELS) is renamed
  exported_<name>, as Prometheus renames a scraped label that collides with a
  target label, so a guest cannot attribute its samples to another pod; reserved
  names (__name__, any __*) are dropped, a repeated name keeps its first value,
  and a sample with more than MAX_LABELS labels is dropped.
"""

from __future__ import annotations

import structlog

from pykata_common.exposition import Family, LabelPairs, Sample
from shim.monitor.parse import parse

log = structlog.get_logger(__name__)
# the labels the host adds (kata-monitor's): sandbox_id, and under CRI the pod's
HOST_LABELS = frozenset({"sandbox_id", "cri_uid", "cri_name", "cri_namespace"})
EXPORTED = "exported_"
MAX_TEXT = 1 << 20  # characters; the agent's own page is a few tens of KiB
MAX_FAMILIES = 500
MAX_SAMPLES = 10_000
MAX_LABELS = 32
# Kata renames these families of the agent's page so they cannot clash with the host's
AGENT_RENAMED = ("go_", "process_")
AGENT_PREFIX = "kata_agent_"
# the guest may only speak for itself: other names could shadow the host's families
AGENT_ALLOWED = (AGENT_PREFIX, "kata_guest_")


def guest_labels(labels: LabelPairs) -> LabelPairs | None:
    """The guest's labels as the host re-serves them; None: drop the sample."""
    if len(labels) > MAX_LABELS:
        return None
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in labels:
        if name.startswith("__"):
            continue
        if name in HOST_LABELS:
            name = EXPORTED + name
        if name not in seen:
            seen.add(name)
            out.append((name, value))
    return tuple(out)


def agent_families(text: str) -> list[Family]:
    """The agent's GetMetrics text as families the host may serve (see the module doc)."""
    if len(text) > MAX_TEXT:
        log.warning("the agent's metrics text is too long: dropped", chars=len(text))
        return []
    kept: list[Family] = []
    samples = dropped = 0
    for family in parse(text):
        if family.name.startswith(AGENT_RENAMED):
            family.name = AGENT_PREFIX + family.name
        if not family.name.startswith(AGENT_ALLOWED):
            continue
        if len(kept) == MAX_FAMILIES:
            dropped += len(family.samples)
            continue
        room = MAX_SAMPLES - samples
        clean = [
            Sample(sample.suffix, labels, sample.value)
            for sample in family.samples[:room]
            if (labels := guest_labels(sample.labels)) is not None
        ]
        dropped += len(family.samples) - len(clean)
        samples += len(clean)
        if clean or not family.samples:
            family.samples = clean
            kept.append(family)
    if dropped:
        log.warning(
            "samples of the agent's metrics dropped",
            dropped=dropped,
            max_families=MAX_FAMILIES,
            max_samples=MAX_SAMPLES,
            max_labels=MAX_LABELS,
        )
    return kept

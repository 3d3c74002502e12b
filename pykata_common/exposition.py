"""Prometheus text exposition format 0.0.4: metric families and their rendering.

A scrape builds fresh `Family` objects (nothing global, nothing registered) and
renders them; families of the same name given more than once are merged, so
several sandboxes' families can be rendered together.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KINDS = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})

LabelPairs = tuple[tuple[str, str], ...]

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_checked_label_names: set[str] = set()
_INT_EXACT = 2.0**53  # beyond this a float may not be an exact integer


def check_label_name(name: str) -> str:
    """Return `name` if it is a valid label name, else raise ValueError."""
    if name not in _checked_label_names:
        if not _LABEL_NAME.match(name) or name.startswith("__"):
            raise ValueError(f"invalid label name {name!r}")
        _checked_label_names.add(name)
    return name


def escape_label_value(value: str) -> str:
    """Escape backslash, double quote and newline, as label values need."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def escape_help(text: str) -> str:
    """Escape backslash and newline, as HELP text needs (quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value: integers without a fraction, NaN and +Inf/-Inf spelled as Go does."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < _INT_EXACT:
        return str(int(value))
    return repr(value)


def format_bound(bound: float) -> str:
    """A histogram `le` value: 1, 2.5, +Inf."""
    return format_value(float(bound))


class Sample(NamedTuple):
    """One line of a family: the name suffix ("" or _bucket/_sum/_count), labels, value."""

    suffix: str
    labels: LabelPairs
    value: float


def _pairs(labels: Mapping[str, str] | LabelPairs | None) -> LabelPairs:
    if not labels:
        return ()
    items = labels.items() if isinstance(labels, Mapping) else labels
    return tuple((check_label_name(k), str(v)) for k, v in items)


class Family:
    """One metric family: name, help, type and its samples.

    >>> Family("kata_shim_fds", "Open fds of the shim.").add(12)
    """

    __slots__ = ("help", "kind", "name", "samples")

    def __init__(self, name: str, help: str, kind: str = "gauge") -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        if kind not in KINDS:
            raise ValueError(f"unknown metric type {kind!r}")
        self.name = name
        self.help = help
        self.kind = kind
        self.samples: list[Sample] = []

    def __repr__(self) -> str:
        return f"Family({self.name!r}, {self.kind}, {len(self.samples)} samples)"

    def add(
        self,
        value: float,
        labels: Mapping[str, str] | LabelPairs | None = None,
        *,
        suffix: str = "",
    ) -> Family:
        """Append one sample; returns the family so calls can be chained."""
        self.samples.append(Sample(suffix, _pairs(labels), value))
        return self

    def add_histogram(
        self,
        bounds: Sequence[float],
        counts: Sequence[int],
        total: float,
        labels: Mapping[str, str] | LabelPairs | None = None,
    ) -> Family:
        """Append one histogram series.

        `counts[i]` is the number of observations in bucket i alone (not
        cumulative): `counts` has one more entry than `bounds`, the last for
        observations above the highest bound. The series gets cumulative
        _bucket lines for every bound and +Inf, then _sum and _count.
        """
        if self.kind != "histogram":
            raise ValueError(f"{self.name} is a {self.kind}, not a histogram")
        if len(counts) != len(bounds) + 1:
            raise ValueError("counts needs one entry per bound plus one for +Inf")
        pairs = _pairs(labels)
        running = 0
        for bound, count in zip(bounds, counts, strict=False):
            running += count
            self.samples.append(Sample("_bucket", (*pairs, ("le", format_bound(bound))), running))
        running += counts[-1]
        self.samples.append(Sample("_bucket", (*pairs, ("le", "+Inf")), running))
        self.samples.append(Sample("_sum", pairs, total))
        self.samples.append(Sample("_count", pairs, running))
        return self


def with_labels(families: Iterable[Family], labels: Mapping[str, str]) -> list[Family]:
    """Copies of `families` with `labels` put first on every sample.

    A sample that already has one of these labels keeps its own value.
    """
    extra = _pairs(labels)
    names = {name for name, _ in extra}
    out: list[Family] = []
    for family in families:
        copy = Family(family.name, family.help, family.kind)
        append = copy.samples.append
        for suffix, own, value in family.samples:
            added = extra
            for name, _ in own:
                if name in names:
                    have = {k for k, _ in own}
                    added = tuple(pair for pair in extra if pair[0] not in have)
                    break
            append(Sample(suffix, added + own, value))
        out.append(copy)
    return out


def _merge(families: Iterable[Family]) -> list[Family]:
    merged: dict[str, Family] = {}
    copied: set[str] = set()
    for family in families:
        first = merged.get(family.name)
        if first is None:
            merged[family.name] = family
        elif first.kind == family.kind:
            if family.name not in copied:  # never grow a caller's family
                first = merged[family.name] = _copy(first)
                copied.add(family.name)
            first.samples.extend(family.samples)
        # else: a later family of another type under a taken name is dropped, so
        # text from a peer (the guest) cannot make the whole page invalid
    return list(merged.values())


def _copy(family: Family) -> Family:
    copy = Family(family.name, family.help, family.kind)
    copy.samples = list(family.samples)
    return copy


def render(families: Iterable[Family]) -> str:
    """The text page for `families` (HELP and TYPE once per name, samples grouped)."""
    lines: list[str] = []
    append = lines.append
    pairs: dict[tuple[str, str], str] = {}  # label pairs repeat a lot (sandbox_id, item)
    for family in _merge(families):
        name = family.name
        append(f"# HELP {name} {escape_help(family.help)}")
        append(f"# TYPE {name} {family.kind}")
        for sample in family.samples:
            if sample.labels:
                parts = []
                for pair in sample.labels:
                    text = pairs.get(pair)
                    if text is None:
                        text = pairs[pair] = f'{pair[0]}="{escape_label_value(pair[1])}"'
                    parts.append(text)
                inner = ",".join(parts)
                append(f"{name}{sample.suffix}{{{inner}}} {format_value(sample.value)}")
            else:
                append(f"{name}{sample.suffix} {format_value(sample.value)}")
    if not lines:
        return ""
    append("")
    return "\n".join(lines)


def render_bytes(families: Iterable[Family]) -> bytes:
    """`render` encoded as UTF-8, ready for an HTTP body."""
    return render(families).encode()

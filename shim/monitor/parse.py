"""Reading Prometheus text (0.0.4) back into families: the agent's GetMetrics answer.

The guest's text is passed on to the host's scrape with the sandbox's labels
added, so it has to be read first. Lenient by default: a line that cannot be
read is skipped, so one bad line does not lose the rest of the page.
"""

from __future__ import annotations

import re

from pykata_common.exposition import KINDS, Family, LabelPairs, Sample

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+-?\d+)?\s*$"
)
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_UNESCAPE = re.compile(r"\\(.)")
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    return _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def _labels(text: str | None) -> LabelPairs:
    if not text or not text.strip():
        return ()
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        if match is None:
            if text[pos:].strip():
                raise ValueError(f"bad labels {text!r}")
            break
        pairs.append((match.group(1), _unescape(match.group(2))))
        pos = match.end()
    return tuple(pairs)


def _split(name: str, family: Family | None) -> str | None:
    """The suffix if `name` is a sample of `family`, else None."""
    if family is None:
        return None
    if name == family.name:
        return ""
    for suffix in _SUFFIXES.get(family.kind, ()):
        if name == family.name + suffix:
            return suffix
    return None


def parse(text: str, *, strict: bool = False) -> list[Family]:
    """The families of a text page, in order.

    Samples without a TYPE line before them form untyped families. With
    `strict`, a line that cannot be read raises ValueError (with its number).
    """
    families: dict[str, Family] = {}
    helps: dict[str, str] = {}
    current: Family | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        try:
            if line.startswith("#"):
                parts = line[1:].split(None, 2)
                if len(parts) >= 2 and parts[0] == "HELP":
                    help_text = _unescape(parts[2]) if len(parts) == 3 else ""
                    helps[parts[1]] = help_text
                    if parts[1] in families:
                        families[parts[1]].help = help_text
                elif len(parts) >= 2 and parts[0] == "TYPE":
                    kind = parts[2].strip() if len(parts) == 3 else ""
                    if kind not in KINDS:
                        raise ValueError(f"unknown type {kind!r}")
                    if parts[1] in families:
                        raise ValueError(f"TYPE for {parts[1]} after its samples")
                    current = families[parts[1]] = Family(parts[1], helps.get(parts[1], ""), kind)
                continue
            match = _SAMPLE.match(line)
            if match is None:
                raise ValueError("not a sample line")
            name = match.group("name")
            labels = _labels(match.group("labels"))
            value = float(match.group("value"))
            suffix = _split(name, current)
            if suffix is None:
                current = families.get(name)
                if current is None:
                    current = families[name] = Family(name, helps.get(name, ""), "untyped")
                suffix = ""
            current.samples.append(Sample(suffix, labels, value))
        except ValueError as exc:
            if strict:
                raise ValueError(f"line {number}: {exc}") from None
    return list(families.values())

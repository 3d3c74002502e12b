"""Guest bytes made safe for the operator's terminal: control characters shown, not obeyed.

What a guest prints (its console, a command's output) is the guest's to choose, and
a terminal obeys escape sequences: a hostile guest could retitle or clear it, move
the cursor to overwrite what was printed before, or on some terminals have keys
typed back. TerminalText passes UTF-8 text, \\n, \\t and \\r\\n through and shows
every other control character: C0 and DEL as \\x1b, a CR not before LF as \\r, C1 and
the bidi overrides as \\u009b, a byte that is not UTF-8 as \\xff. It works chunk by
chunk and holds back at most an unfinished character and a CR (4 bytes).
"""

from __future__ import annotations

import codecs
import re

# What a terminal acts on: C0 but TAB, LF, CR; DEL and C1; the bidi embeddings,
# overrides and isolates (they reorder what is shown); and a CR not before LF.
_CONTROL = re.compile("[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]|\r(?!\n)")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x0D:
        return "\\r"
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


class TerminalText:
    """Incremental: feed() each chunk as it comes, flush() once at the end."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        self._cr = False  # a CR at the end of the last chunk: its LF may be in the next

    def feed(self, data: bytes) -> bytes:
        """The printable form of `data`, less what waits for the next chunk."""
        return self._render(self._decoder.decode(data), final=False)

    def flush(self) -> bytes:
        """What was held back, shown as it stands."""
        return self._render(self._decoder.decode(b"", final=True), final=True)

    def _render(self, text: str, *, final: bool) -> bytes:
        if self._cr:
            text = "\r" + text
        self._cr = not final and text.endswith("\r")
        if self._cr:
            text = text[:-1]
        return _CONTROL.sub(_visible, text).encode()



RAW_HELP = (
    "pass the guest's bytes through as they are (the guest can then send your terminal "
    "escape sequences); without it, control characters are shown as \\x1b"
)

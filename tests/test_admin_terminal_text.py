"""Guest bytes shown on the operator's terminal: control characters escaped, text kept."""

from __future__ import annotations

import pytest

from shim.admin.terminal_text import TerminalText

HOSTILE = b"\x1b]0;owned\x07\x1b[2J"


def show(data: bytes, step: int | None = None) -> bytes:
    """TerminalText over data, whole or `step` bytes at a time."""
    text = TerminalText()
    step = step or len(data) or 1
    return b"".join(text.feed(data[i : i + step]) for i in range(0, len(data), step)) + (
        text.flush()
    )


@pytest.mark.parametrize("step", [None, 1, 2, 3])
def test_escape_sequences_are_shown_not_sent(step):
    assert show(b"before " + HOSTILE + b" after\n", step) == (
        b"before \\x1b]0;owned\\x07\\x1b[2J after\n"
    )


@pytest.mark.parametrize("step", [None, 1])
def test_text_tabs_and_line_ends_pass(step):
    text = "caf\u00e9 \u65e5\u672c \U0001f600\tcol\r\nnext\n".encode()
    assert show(text, step) == text


@pytest.mark.parametrize("step", [None, 1])
def test_every_other_control_is_visible(step):
    data = (
        b"a\rb\x00\x08\x7f"  # a lone CR (overwrites the line), NUL, BS, DEL
        + "\u009b\u202e".encode()  # C1 CSI, right-to-left override
        + b"\xff\xc3"  # not UTF-8; a character cut short at the end
    )
    assert show(data, step) == b"a\\rb\\x00\\x08\\x7f\\u009b\\u202e\\xff\\xc3"


def test_a_cr_at_a_chunk_end_waits_for_its_lf():
    text = TerminalText()
    assert text.feed(b"line\r") == b"line"
    assert text.feed(b"\nmore\r") == b"\r\nmore"
    assert text.feed(b"x") == b"\\rx"
    assert text.feed(b"end\r") == b"end"
    assert text.flush() == b"\\r"


def test_a_long_stream_without_a_line_end_is_given_out_as_it_comes():
    text = TerminalText()
    chunk = b"A" * 65536 + HOSTILE
    for _ in range(64):
        assert text.feed(chunk) == b"A" * 65536 + b"\\x1b]0;owned\\x07\\x1b[2J"
    assert text.flush() == b""

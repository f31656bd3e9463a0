"""Stored octets -> wire octets (pop2gate.stores.wireform): line ends, the last line, UW's form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import fuzz
from pop2gate.stores.wireform import (
    CrlfEncoder,
    LineEnder,
    UwStatus,
    WireEncoder,
    WireForm,
    crlf,
    ended_size,
    line_end,
    status_line,
    uw_extra,
    wire_size_of,
)


def run(enc: CrlfEncoder | LineEnder | UwStatus | WireEncoder, data: bytes, size: int) -> bytes:
    """`data` through `enc` in chunks of `size` octets."""
    out = b"".join(enc.feed(data[i : i + size]) for i in range(0, len(data), size))
    return out + enc.finish()


# -- line ends and the last line ---------------------------------------------------


@pytest.mark.parametrize("stored,wire", [
    (b"", b""),
    (b"a", b"a\r\n"),
    (b"a\n", b"a\r\n"),
    (b"a\r\n", b"a\r\n"),
    (b"a\nb", b"a\r\nb\r\n"),
    (b"a\r\nb\n", b"a\r\nb\r\n"),
    (b"\n\n", b"\r\n\r\n"),
    (b"a\r", b"a\r\r\n"),        # a lone CR is kept, and the line still gets its end
    (b"a\rb\n", b"a\rb\r\n"),
    (b"\r", b"\r\r\n"),
])
def test_crlf_encoder(stored, wire):
    for size in range(1, max(len(stored), 1) + 1):
        assert run(CrlfEncoder(), stored, size) == wire, size
    assert wire_size_of([stored]) == len(wire)
    assert wire_size_of(stored[i : i + 1] for i in range(len(stored))) == len(wire)


@pytest.mark.parametrize("stored,wire", [
    (b"", b""),
    (b"a", b"a\r\n"),
    (b"a\r\n", b"a\r\n"),
    (b"a\n", b"a\n\r\n"),        # network form passes unchanged: a bare LF is not a line end
    (b"a\r", b"a\r\r\n"),
    (b"a\nb\r\n", b"a\nb\r\n"),
])
def test_line_ender_passes_network_form(stored, wire):
    for size in range(1, max(len(stored), 1) + 1):
        assert run(LineEnder(), stored, size) == wire, size
    assert ended_size(len(stored), stored[-2:]) == len(wire)


def test_line_end_and_ended_size():
    assert line_end(b"") == b"" and line_end(b"\r\n") == b"" and line_end(b"x\r\n") == b""
    assert line_end(b"x") == b"\r\n" and line_end(b"\n") == b"\r\n" and line_end(b"\r") == b"\r\n"
    assert ended_size(0, b"") == 0
    assert ended_size(10, b"\r\n") == 10 and ended_size(10, b"x\n") == 12
    assert ended_size(1, b"x") == 3
    assert ended_size(1, b"\r\n") == 3  # octets beyond a one-octet message cannot end it


# -- UW ipop2d's form --------------------------------------------------------------

# The same messages as the session's UW tests (tests/test_session.py), stored with LF line ends.
UW = [
    (b"Subject: x\n\nbody\n", False, b"Subject: x\r\nStatus:  O\r\n\r\nbody\r\n\r\n"),
    (b"Subject: x\n\nbody\n", True, b"Subject: x\r\nStatus: RO\r\n\r\nbody\r\n\r\n"),
    (b"Subject: only a header\n", False, b"Subject: only a header\r\nStatus:  O\r\n\r\n"),
    (b"Subject: x\n\n\n\nmore\n", False, b"Subject: x\r\nStatus:  O\r\n\r\n\r\n\r\nmore\r\n\r\n"),
    (b"Subject: no end", False, b"Subject: no end\r\nStatus:  O\r\n\r\n"),
]


def test_status_line_and_extra():
    assert status_line(False) == b"Status:  O\r\n"
    assert status_line(True) == b"Status: RO\r\n"
    assert uw_extra(False) == uw_extra(True) == 14


@pytest.mark.parametrize("stored,seen,wire", UW)
def test_uw_form_from_lf_store(stored, seen, wire):
    form = WireForm(uw_compat=True)
    for size in range(1, len(stored) + 1):
        assert run(form.encoder(seen, bare_lf=True), stored, size) == wire, size
    assert form.size(wire_size_of([stored]), seen) == len(wire)


@pytest.mark.parametrize("stored,seen,wire", UW)
def test_uw_form_from_network_form_store(stored, seen, wire):
    stored = stored.replace(b"\n", b"\r\n")
    form = WireForm(uw_compat=True)
    for size in range(1, len(stored) + 1):
        assert run(form.encoder(seen, bare_lf=False), stored, size) == wire, size
    assert form.size(ended_size(len(stored), stored[-2:]), seen) == len(wire)


def test_uw_blank_line_split_across_chunks():
    message = b"A: 1\r\nB: 2\r\n\r\nbody\r\n"
    expected = b"A: 1\r\nB: 2\r\nStatus:  O\r\n\r\nbody\r\n\r\n"
    for size in range(1, len(message) + 1):
        assert run(UwStatus(seen=False), message, size) == expected, size


def test_uw_status_goes_before_the_first_blank_line_only():
    message = b"A: 1\r\n\r\nbody\r\n\r\nmore\r\n"
    assert run(UwStatus(seen=True), message, 3) == b"A: 1\r\nStatus: RO\r\n\r\nbody\r\n\r\nmore\r\n\r\n"


def test_empty_message_stays_empty_in_uw_form():
    form = WireForm(uw_compat=True)
    assert run(form.encoder(False, bare_lf=True), b"", 1) == b""
    assert run(form.encoder(True, bare_lf=False), b"", 1) == b""
    assert form.size(0, False) == 0 and form.size(0, True) == 0


def test_uw_off_adds_nothing():
    form = WireForm()
    assert run(form.encoder(True, bare_lf=True), b"Subject: x\n\nbody\n", 4) == b"Subject: x\r\n\r\nbody\r\n"
    assert form.size(20, True) == 20 and form.size(20, False) == 20
    assert WireForm(uw_compat=True).size(20, False) == 34


# -- counting without encoding, against the encoder --------------------------------------


@fuzz(300)
@given(st.binary(max_size=300).map(lambda b: bytes(b"a\r\n"[x % 3] for x in b)),
       st.lists(st.integers(min_value=1, max_value=20), max_size=30))
def test_wire_size_of_is_what_the_encoder_sends(data, cuts):
    """The count (no output made) equals the encoder's output, however the octets are split."""
    chunks, i = [], 0
    for size in [*cuts, len(data)]:
        chunks.append(data[i : i + size])
        i += size
    enc = CrlfEncoder()
    wire = b"".join(enc.feed(c) for c in chunks) + enc.finish()
    assert wire_size_of(chunks) == len(wire) == len(run(CrlfEncoder(), data, max(len(data), 1)))
    assert wire == (b"" if not data else data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                    + (b"" if data.endswith(b"\n") else b"\r\n"))


def test_crlf_returns_network_form_itself():
    """Octets already in network form are not copied (the common case for a message written by
    an IMAP server's delivery agent into a Maildir)."""
    data = b"Subject: x\r\n\r\n" + b"line\r\n" * 1000
    assert crlf(data) is data
    assert crlf(b"no line end at all") == b"no line end at all"
    assert crlf(b"a\nb\n") == b"a\r\nb\r\n" and crlf(b"a\r\nb\n") == b"a\r\nb\r\n"

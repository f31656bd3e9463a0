"""Folder names on their way into a store (pop2gate.stores.folders): INBOX and IMAP modified UTF-7."""

from __future__ import annotations

import base64

import pytest

from pop2gate.stores.folders import encode_mutf7, is_inbox


def decode_mutf7(text: str) -> str:
    """The test's own decoder (RFC 3501 section 5.1.3), to check the encoder both ways."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "&":
            out.append(text[i])
            i += 1
            continue
        end = text.index("-", i)
        chunk = text[i + 1 : end].replace(",", "/")
        out.append(base64.b64decode(chunk + "=" * (-len(chunk) % 4)).decode("utf-16-be") if chunk else "&")
        i = end + 1
    return "".join(out)


@pytest.mark.parametrize("text,encoded", [
    ("INBOX", "INBOX"),
    ("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501's example
    ("Entw\u00fcrfe & Co", "Entw&APw-rfe &- Co"),
    ("&", "&-"),
    ("\u00e4\u00f6", "&AOQA9g-"),
    ("\U0001f4e7 mail", "&2D3c5w- mail"),  # outside the BMP: a surrogate pair
    ("tab\there", "tab&AAk-here"),
])
def test_encode_mutf7(text, encoded):
    assert encode_mutf7(text) == encoded
    assert decode_mutf7(encoded) == text
    assert encoded.isascii() and all(0x20 <= ord(c) <= 0x7E for c in encoded)


def test_is_inbox():
    assert is_inbox("INBOX") and is_inbox("inbox") and is_inbox("InBoX")
    assert not is_inbox("INBOX/sub") and not is_inbox("Inbox2") and not is_inbox("")

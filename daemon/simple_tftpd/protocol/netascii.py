"""netascii (RFC 764 as used by RFC 1350): CR LF for newlines, CR NUL for a bare CR."""

from __future__ import annotations


def encode(data: bytes) -> bytes:
    """Local (Unix) bytes to netascii. CR first, so the LF rewrite is not doubled."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


class Decoder:
    """Streaming netascii to local bytes; a CR may end one block and its partner start the next."""

    def __init__(self) -> None:
        self._pending_cr = False

    def feed(self, chunk: bytes) -> bytes:
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._pending_cr = True
        return chunk.replace(b"\r\n", b"\n").replace(b"\r\0", b"\r")

    def finish(self) -> bytes:
        # A CR at the very end has no partner: keep it as sent.
        tail = b"\r" if self._pending_cr else b""
        self._pending_cr = False
        return tail

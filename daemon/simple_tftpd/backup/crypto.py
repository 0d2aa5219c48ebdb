"""Keys, and the framing that seals every object written to a backup location.

Every object is framed the same way, encrypted or not:

    header (20 bytes): b"STB1" | algorithm (1) | key id (8) | nonce prefix (7)
    segments:          up to SEGMENT bytes of content each, followed by a 16-byte tag

With encryption, segments are AES-256-GCM in the STREAM construction (Hoang, Reyhanitabar,
Rogaway, Vizar 2015): segment i's nonce is the random prefix, the counter i and a last-segment
flag, and the header and the object's name are authenticated with every segment. Flipping a
byte, cutting an object short (even at a segment boundary), appending to it, reordering its
segments or moving it to another name all fail authentication, and objects are sealed and
opened in one streaming pass with bounded memory, whatever their size.

Without encryption the tag is a truncated SHA-256 over the same inputs: it catches damage and
truncation, not deliberate tampering (anyone can recompute it).

The operator's 32-byte master key never leaves the process. HKDF-SHA256 derives from it the
AES key, a key that names blobs (so a location does not reveal the sha256 of the files it
holds) and an 8-byte key id, stored in clear so that a wrong key is reported as a wrong key
rather than as tampering.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"STB1"
KEY_SIZE = 32
KEY_ID_SIZE = 8
NONCE_PREFIX_SIZE = 7
HEADER_SIZE = len(MAGIC) + 1 + KEY_ID_SIZE + NONCE_PREFIX_SIZE
TAG_SIZE = 16
SEGMENT = 1 << 20
ALGORITHMS = {0: "none", 1: "aes-256-gcm"}
DEFAULT_KEY_ENV = "SIMPLE_TFTPD_BACKUP_KEY"

_HEX_KEY_RE = re.compile(r"[0-9a-fA-F]{64}")


class BackupError(Exception):
    """Any backup problem the operator has to act on; the message says what and where."""


class KeyProblem(BackupError):
    """The key is missing, unreadable or malformed."""


class IntegrityError(BackupError):
    """An object failed a check: its name comes first in the message."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name


class WrongKey(IntegrityError):
    """The object was sealed with another key."""


def parse_key(text: str, source: str) -> bytes:
    """A key written as 64 hex characters or as base64 of 32 bytes (`openssl rand -hex 32`)."""
    value = text.strip()
    if _HEX_KEY_RE.fullmatch(value):
        return bytes.fromhex(value)
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_SIZE:
        raise KeyProblem(
            f"{source}: a backup key is 32 bytes written as 64 hex characters or as base64 "
            "(e.g. `openssl rand -hex 32`)"
        )
    return key


def load_key(key_file: Path | None, key_env: str | None) -> bytes:
    """The master key from a file or from an environment variable (the file wins)."""
    if key_file is not None:
        try:
            return parse_key(key_file.read_text(encoding="ascii"), str(key_file))
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyProblem(f"cannot read the backup key file {key_file}: {exc}") from None
    if key_env is not None:
        value = os.environ.get(key_env)
        if not value:
            raise KeyProblem(f"the environment variable {key_env} (backup key) is not set")
        return parse_key(value, f"${key_env}")
    raise KeyProblem("no backup key: give a key file or an environment variable")


def _derive(master: bytes, label: bytes, length: int) -> bytes:
    # One master key, independent subkeys: learning a blob name key or a key id reveals
    # nothing about the encryption key.
    hkdf = HKDF(hashes.SHA256(), length, salt=None, info=b"simple-tftpd backup v1 " + label)
    return hkdf.derive(master)


class Sealer:
    """Seals and opens objects for one location; `key=None` means no encryption."""

    def __init__(self, key: bytes | None) -> None:
        if key is not None and len(key) != KEY_SIZE:
            raise KeyProblem("a backup key is 32 bytes")
        self.algorithm = 1 if key is not None else 0
        self._aead = AESGCM(_derive(key, b"aes-256-gcm", KEY_SIZE)) if key is not None else None
        self._names = _derive(key, b"blob names", KEY_SIZE) if key is not None else None
        self.key_id = _derive(key, b"key id", KEY_ID_SIZE) if key is not None else bytes(8)

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    @property
    def algorithm_name(self) -> str:
        return ALGORITHMS[self.algorithm]

    def blob_name(self, digest: str) -> str:
        """The object name of a blob: a keyed hash of its sha256 when encrypting."""
        if self._names is None:
            return digest
        return hmac.new(self._names, digest.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def sealed_size(size: int) -> int:
        segments = max(1, -(-size // SEGMENT))
        return HEADER_SIZE + size + segments * TAG_SIZE

    def _tag(self, nonce: bytes, aad: bytes, data: bytes) -> bytes:
        context = b"simple-tftpd backup none" + nonce + aad
        return hashlib.sha256(context + data).digest()[:TAG_SIZE]

    def seal_segment(self, nonce: bytes, aad: bytes, data: bytes) -> bytes:
        if self._aead is not None:
            return self._aead.encrypt(nonce, data, aad)
        return data + self._tag(nonce, aad, data)

    def open_segment(self, nonce: bytes, aad: bytes, sealed: bytes) -> bytes | None:
        """The content, or None if the tag does not match."""
        if self._aead is not None:
            try:
                return self._aead.decrypt(nonce, sealed, aad)
            except InvalidTag:
                return None
        data, tag = sealed[:-TAG_SIZE], sealed[-TAG_SIZE:]
        return data if hmac.compare_digest(tag, self._tag(nonce, aad, data)) else None

    def sealing(self, name: str) -> SealStream:
        return SealStream(self, name)

    def opening(self, name: str) -> OpenStream:
        return OpenStream(self, name)

    def seal(self, name: str, data: bytes) -> bytes:
        stream = self.sealing(name)
        return stream.feed(data) + stream.finish()

    def open(self, name: str, data: bytes) -> bytes:
        stream = self.opening(name)
        return stream.feed(data) + stream.finish()

    def seal_file(self, name: str, source: Path, sink: BinaryIO) -> int:
        """Seal a file into `sink`; returns the sealed size."""
        stream = self.sealing(name)
        written = 0
        with source.open("rb") as f:
            for chunk in iter(lambda: f.read(SEGMENT), b""):
                written += sink.write(stream.feed(chunk))
        return written + sink.write(stream.finish())


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


class SealStream:
    """Content in, sealed bytes out; the last segment is sealed by `finish`."""

    def __init__(self, sealer: Sealer, name: str) -> None:
        self._sealer = sealer
        self._prefix = os.urandom(NONCE_PREFIX_SIZE)
        self._header = MAGIC + bytes([sealer.algorithm]) + sealer.key_id + self._prefix
        self._aad = self._header + name.encode()
        self._pending = bytearray()
        self._counter = 0
        self._started = False

    def _segment(self, data: bytes, last: bool) -> bytes:
        nonce = _nonce(self._prefix, self._counter, last)
        self._counter += 1
        return self._sealer.seal_segment(nonce, self._aad, data)

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        if not self._started:
            out += self._header
            self._started = True
        self._pending += data
        # Hold back at least one segment's worth: only `finish` knows which one is last.
        while len(self._pending) > SEGMENT:
            out += self._segment(bytes(self._pending[:SEGMENT]), last=False)
            del self._pending[:SEGMENT]
        return bytes(out)

    def finish(self) -> bytes:
        head = self.feed(b"")
        return head + self._segment(bytes(self._pending), last=True)


class OpenStream:
    """Sealed bytes in, authenticated content out; `finish` checks the object is complete."""

    def __init__(self, sealer: Sealer, name: str) -> None:
        self._sealer = sealer
        self._name = name
        self._buffer = bytearray()
        self._aad: bytes | None = None
        self._prefix = b""
        self._counter = 0

    def _header(self) -> None:
        header = bytes(self._buffer[:HEADER_SIZE])
        del self._buffer[:HEADER_SIZE]
        if header[: len(MAGIC)] != MAGIC:
            raise IntegrityError(self._name, "not a simple-tftpd backup object (bad header)")
        algorithm = header[len(MAGIC)]
        if algorithm != self._sealer.algorithm:
            found = ALGORITHMS.get(algorithm, f"unknown ({algorithm})")
            raise IntegrityError(
                self._name,
                f"sealed with algorithm {found}, expected {self._sealer.algorithm_name}",
            )
        key_id = header[len(MAGIC) + 1 : len(MAGIC) + 1 + KEY_ID_SIZE]
        if key_id != self._sealer.key_id:
            raise WrongKey(
                self._name,
                f"encrypted with key id {key_id.hex()}, but the given key has id "
                f"{self._sealer.key_id.hex()}: wrong key",
            )
        self._prefix = header[-NONCE_PREFIX_SIZE:]
        self._aad = header + self._name.encode()

    def _segment(self, sealed: bytes, last: bool) -> bytes:
        assert self._aad is not None
        nonce = _nonce(self._prefix, self._counter, last)
        data = self._sealer.open_segment(nonce, self._aad, sealed)
        if data is None:
            raise IntegrityError(
                self._name,
                f"authentication failed at segment {self._counter}: the object was modified, "
                "truncated or damaged",
            )
        self._counter += 1
        return data

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        if self._aad is None:
            if len(self._buffer) < HEADER_SIZE:
                return b""
            self._header()
        out = bytearray()
        full = SEGMENT + TAG_SIZE
        while len(self._buffer) > full:
            out += self._segment(bytes(self._buffer[:full]), last=False)
            del self._buffer[:full]
        return bytes(out)

    def finish(self) -> bytes:
        if self._aad is None or len(self._buffer) < TAG_SIZE:
            raise IntegrityError(self._name, "truncated: shorter than its header and tag")
        return self._segment(bytes(self._buffer), last=True)

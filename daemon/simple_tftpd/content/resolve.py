"""Secure mapping of TFTP file names onto files below a root directory.

Python TFTP servers have repeatedly been vulnerable to traversal through string-prefix
containment checks and through names such as ``sub/../../../etc/hostname`` (which the kernel
resolves once ``sub`` exists) or symlinks leading out of the root. The defences here are layered:
names containing ``..`` are refused outright, and the fully resolved real path must still be a
descendant of the real root according to ``os.path.commonpath``.
"""

import os
import posixpath
import re
import stat
from collections.abc import Sequence
from pathlib import Path

FILE_NOT_FOUND = 1
ACCESS_VIOLATION = 2

MAX_NAME_BYTES = 1024

# Both separators are checked so that "..\\" cannot smuggle a parent reference past a later
# remap rule or a client that thinks in Windows paths.
_COMPONENT_SPLIT = re.compile(r"[/\\]")


class ResolveError(Exception):
    """A request cannot be served; ``code`` is the TFTP error code to send."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


def _not_found() -> ResolveError:
    return ResolveError(FILE_NOT_FOUND, "File not found")


def _denied() -> ResolveError:
    return ResolveError(ACCESS_VIOLATION, "Access violation")


def _check_raw(name: str) -> None:
    if "\x00" in name:
        raise _denied()
    try:
        encoded = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Lone surrogates that are not surrogateescape bytes cannot name any file on disk.
        raise _denied() from None
    if len(encoded) > MAX_NAME_BYTES:
        raise _denied()


def _is_within(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


class PathResolver:
    """Resolves client-supplied names to real paths confined to ``root``."""

    def __init__(self, root: Path, remap: Sequence[tuple[str, str]] = ()) -> None:
        self._root = os.path.realpath(root)
        self.root = Path(self._root)
        self._remap = [(re.compile(pattern), replacement) for pattern, replacement in remap]

    def rel_name(self, filename: str) -> str:
        """Return the normalised name relative to the root, or raise ResolveError."""
        # Checked before remapping too, so oversized input never reaches the regexes.
        _check_raw(filename)
        name = filename
        for pattern, replacement in self._remap:
            name = pattern.sub(replacement, name)
        _check_raw(name)
        # PXE firmware and tftp-hpa clients often send "/pxelinux.0"; like tftp-hpa -s, treat
        # it as relative to the root instead of as an absolute server path.
        name = name.lstrip("/")
        if not name:
            raise _denied()
        if any(part == ".." for part in _COMPONENT_SPLIT.split(name)):
            raise _denied()
        return posixpath.normpath(name)

    def _real(self, rel: str) -> str:
        real = os.path.realpath(os.path.join(self._root, rel))
        if not _is_within(self._root, real):
            raise _denied()
        return real

    def resolve_read(self, filename: str) -> Path:
        """Return the real path of an existing regular file inside the root."""
        real = self._real(self.rel_name(filename))
        try:
            # lstat: realpath already followed every link, so a link here means the tree changed
            # under us and must not be followed unchecked.
            st = os.lstat(real)
        except (FileNotFoundError, NotADirectoryError):
            raise _not_found() from None
        except OSError:
            raise _denied() from None
        # Only regular files: opening a fifo would block and a device could leak or hang.
        if not stat.S_ISREG(st.st_mode):
            raise _denied()
        return Path(real)

    def resolve_write(self, filename: str, prefixes: Sequence[str]) -> Path:
        """Return the path to create or replace for an upload of ``filename``.

        The name must lie below one of ``prefixes`` (directory-wise; an empty prefix or "/"
        means the whole root), its parent directory must already exist inside both the root and
        that prefix's real directory, and an existing target must be a regular file.
        """
        rel = self.rel_name(filename)
        parent_rel, base = posixpath.split(rel)
        real_parent = self._real(parent_rel)
        if not any(self._under_prefix(rel, real_parent, prefix) for prefix in prefixes):
            raise _denied()
        try:
            parent_st = os.stat(real_parent)
        except OSError:
            raise _denied() from None
        if not stat.S_ISDIR(parent_st.st_mode):
            raise _denied()
        target = os.path.join(real_parent, base)
        try:
            target_st = os.lstat(target)
        except FileNotFoundError:
            return Path(target)
        except OSError:
            raise _denied() from None
        # Replacing a symlink would write through it; directories and special files are never
        # valid upload targets.
        if not stat.S_ISREG(target_st.st_mode):
            raise _denied()
        return Path(target)

    def _under_prefix(self, rel: str, real_parent: str, prefix: str) -> bool:
        norm = posixpath.normpath(prefix.strip("/") or ".")
        if norm == ".":
            return True
        if not rel.startswith(norm + "/"):
            return False
        # The lexical match alone is not enough: a symlink at or below the prefix could redirect
        # the upload into another part of the tree (or the whole of it).
        real_prefix = os.path.realpath(os.path.join(self._root, norm))
        return (
            real_prefix != self._root
            and _is_within(self._root, real_prefix)
            and _is_within(real_prefix, real_parent)
        )

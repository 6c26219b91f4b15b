"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

The new content goes to a uniquely named temporary file in the same folder (so the rename stays on one
filesystem and two processes never share a temporary name), is fsynced, and replaces the target with
``os.replace``; on any failure the temporary file is removed and the target is untouched.
"""

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_bytes", "write_text", "write_json"]

FILE_MODE = 0o644  # mkstemp makes files private; cards, pointers and tables are readable like the weights


@contextmanager
def atomic_path(path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to (by any library; ``suffix`` for libraries that insist
    on one, e.g. ``.weights.h5``); on success it is fsynced and replaces ``path``, on an exception removed."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes(path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text(path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path, data) -> None:
    """Replace ``path`` with ``data`` as indented JSON atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")

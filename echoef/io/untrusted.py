"""Opening a file someone handed in: only a regular file, and only as much of it as such a file can be.

A path from a user, a bundle or a study folder may name a FIFO (opening it for reading waits for a
writer that never comes), a device (``/dev/zero`` reads forever), a folder, or a regular file far
larger than its kind ever is. Every file a command reads whole goes through ``read_bounded``; a
file a library opens itself (weights, a video) is first checked by ``regular_file``. Both raise
ValueError, which each caller turns into its own one-line refusal or its study's status.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_SMALL_FILE_BYTES = 64 << 20  # JSON and text the commands read whole: calibrators, rows, records, tables


def regular_file(path: str | Path) -> Path:
    """``path`` if it names a regular file (links followed), else ValueError; OSError if it names
    nothing. Checked without opening it, so a FIFO cannot block."""
    path = Path(path)
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path.name} is not a regular file (a folder, a FIFO or a device is not read)")
    return path


def read_bounded(path: str | Path, max_bytes: int = MAX_SMALL_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path`` if it holds at most ``max_bytes``, else ValueError; never
    more than ``max_bytes + 1`` bytes are read. Opened without blocking, so a FIFO is refused rather
    than waited on; OSError if it names nothing or cannot be read."""
    path = Path(path)
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path.name} is not a regular file (a folder, a FIFO or a device is not read)")
        if info.st_size > max_bytes:
            raise ValueError(f"{path.name} is {info.st_size} bytes, more than such a file holds ({max_bytes})")
        handle = os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
    with handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while being read
        raise ValueError(f"{path.name} is more than {max_bytes} bytes, more than such a file holds")
    return data

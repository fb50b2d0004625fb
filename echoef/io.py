"""Atomic output writers: a temporary file in the same folder, then a rename.

A crash (or a kill) mid-write leaves the previous file or none, never half of one; what it can
leave is a hidden ``.NAME.*.tmp`` beside it, which git and DVC ignore and the next write replaces.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the mode a plain ``open`` would give it (0666 less the umask): mkstemp's
    owner-only 0600 would hide results from the rest of a lab sharing a folder or a DVC cache.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_files(path: str | Path):
    """Yield ``path``'s name inside a temporary folder beside it, for writers that add files of their
    own (MetaImage's .raw beside the .mhd); move them out only if the block succeeds, ``path``
    itself last, so a reader never finds a header whose data is not there yet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield folder / path.name
        written = sorted(folder.iterdir(), key=lambda f: f.name == path.name)
        for file in written:
            os.replace(file, path.parent / file.name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def atomic_folder(path: str | Path):
    """Yield a new temporary folder beside ``path`` to fill; only if the block succeeds does it become
    ``path``, replacing an older one, so a reader finds the old folder or the whole new one, never half.
    The folder gets the mode a plain ``mkdir`` would give it (0777 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    old = folder.with_suffix(".old")
    try:
        yield folder
        os.chmod(folder, 0o777 & ~_umask())
        if path.exists():
            os.replace(path, old)  # a folder cannot be renamed onto a non-empty one
        os.replace(folder, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def as_json(value):
    """``value`` as ``write_json`` stores it (and ``read_json`` gives it back): NaN and infinities
    become null (JSON has no NaN, and DVC reads null as missing), numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data) -> None:
    """Write JSON (indented, keys in insertion order, NaN as null) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(as_json(data), indent=2, allow_nan=False) + "\n")


def write_csv(path: str | Path, table: pd.DataFrame) -> None:
    """Write a table as CSV without the index, atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Write compressed arrays atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)


def read_json(path: str | Path):
    """Read a JSON file."""
    return json.loads(Path(path).read_text())

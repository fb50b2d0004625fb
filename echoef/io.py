"""Atomic output writers: a temporary file in the same folder, then a rename."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _finite(value):
    """NaN and infinities become null: JSON has no NaN, and DVC reads null as missing."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str | Path, data) -> None:
    """Write JSON (indented, keys in insertion order, NaN as null) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


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

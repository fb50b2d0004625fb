"""Atomic output writers: a temporary file in the same folder, then a rename; and the folders a
command may write over.

A crash (or a kill) mid-write leaves the previous file or none, never half of one; what it can
leave is a hidden ``.NAME.*.tmp`` beside it, which git and DVC ignore and the next write replaces.

A command writes over, or replaces, only folders that EchoEF made: those holding the ``OWNER_MARK``
file (``claim_folder``, ``atomic_folder``). A folder of anything else that is not empty is refused
(``ForeignFolderError``): nothing of a user's is ever overwritten or deleted.
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

from ..errors import ForeignFolderError
from .untrusted import MAX_SMALL_FILE_BYTES, read_bounded

OWNER_MARK = ".echoef"  # the file that says EchoEF made this folder (and may write over it)


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


_ACCUMULATES = "accumulates"  # a mark's entries for a folder written into over several runs


def _marked_entries(path: Path) -> set[str] | str | None:
    """What the owner mark of folder ``path`` says EchoEF wrote there: the set of its entries (a
    folder written whole), ``_ACCUMULATES`` (a folder written into over several runs), or None when
    there is no readable mark."""
    try:
        entries = read_json(path / OWNER_MARK, 1 << 20)["entries"]
        return _ACCUMULATES if entries is None else {str(entry) for entry in entries} | {OWNER_MARK}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_ownable(path: str | Path, what: str, replace: bool = False) -> None:
    """ForeignFolderError unless ``path`` is absent, empty, or a folder EchoEF made (it holds the owner
    mark); to ``replace`` it, the mark must list every entry in it as written by EchoEF, so that
    nothing a user added is deleted with it."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() or not path.is_dir():
        raise ForeignFolderError(f"{what} {path} is {'a link' if path.is_symlink() else 'a file'}; give a new folder")
    present = {entry.name for entry in path.iterdir()}
    if not present:
        return
    marked = _marked_entries(path)
    if marked == _ACCUMULATES and not replace:
        return
    foreign = sorted(present - marked) if isinstance(marked, set) else sorted(present)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ForeignFolderError(f"{what} {path} holds files EchoEF did not write there ({shown}); "
                                 "give an empty or new folder")


def _write_mark(folder: Path, entries: list[str] | None) -> None:
    write_text(folder / OWNER_MARK, json.dumps({"written_by": "EchoEF", "entries": entries}) + "\n")


def claim_folder(path: str | Path, what: str = "--out") -> Path:
    """``path`` created if need be and marked as EchoEF's, for a command that writes into it over
    several runs (``predict --out``); ForeignFolderError for a non-empty folder EchoEF did not make."""
    path = Path(path)
    check_ownable(path, what)
    path.mkdir(parents=True, exist_ok=True)
    if _marked_entries(path) != _ACCUMULATES:
        _write_mark(path, None)
    return path


def remove_stage_output(path: str | Path, written: tuple[str, ...], what: str = "--out",
                        files: tuple[Path | None, ...] = ()) -> None:
    """Delete the folder ``path`` that an earlier run of a pipeline stage left, before the stage writes
    it again. Only a folder every file of which matches one of ``written`` (the stage's own file
    patterns, as ``Path.match`` takes them) or is one of ``files`` (the stage's other outputs, named by
    their own flags, which may lie inside the folder: the fold's ``--dice`` inside its predictions) is
    deleted; anything else, a link or a file in its place is ForeignFolderError, with nothing deleted.
    DVC removes a stage's outputs itself before running it; this guards a stage run by hand with
    ``--out`` naming a folder of someone else's."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise ForeignFolderError(f"{what} {path} is a link or a file, not a folder this stage wrote; give another path")
    own_files = {Path(os.path.abspath(file)) for file in files if file is not None}

    def own(entry: Path) -> bool:
        return any(entry.match(pattern) for pattern in written) or Path(os.path.abspath(entry)) in own_files

    foreign = sorted(str(entry.relative_to(path)) for entry in path.rglob("*")
                     if (entry.is_symlink() or not entry.is_dir()) and not own(entry))
    if foreign:
        raise ForeignFolderError(f"{what} {path} holds files this stage does not write ({', '.join(foreign[:3])}"
                                 f"{', ...' if len(foreign) > 3 else ''}); give its own folder, or empty this one yourself")
    shutil.rmtree(path)


@contextmanager
def atomic_folder(path: str | Path, what: str = "--out"):
    """Yield a new temporary folder beside ``path`` to fill; only if the block succeeds does it become
    ``path``, replacing an older one, so a reader finds the old folder or the whole new one, never half.
    An existing ``path`` is replaced only if it holds nothing but what EchoEF wrote there
    (``check_ownable``, checked before any work and again before the swap). The folder gets the mode a
    plain ``mkdir`` would give it (0777 less the umask) and an owner mark listing its entries."""
    path = Path(path)
    check_ownable(path, what, replace=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    old = folder.with_suffix(".old")
    try:
        yield folder
        _write_mark(folder, sorted(entry.name for entry in folder.iterdir()))
        check_ownable(path, what, replace=True)
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


# A spreadsheet reads a cell that starts with one of these as a formula (=HYPERLINK(...), =cmd|...):
# text taken from a user's file names or tags must not become one where a reader opens summary.csv.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _inert(value):
    """A text cell made safe to open: a carriage return or NUL written as the two characters \\r or
    \\x00 (the CSV writer does not quote a lone carriage return, which a reader takes for the end of
    the row: a crafted name would start a row of its own), and a cell that a spreadsheet would run as
    a formula with a leading ' (OWASP's advice), so that it shows as the text it is. Anything else
    as it is; numbers are never touched."""
    if not isinstance(value, str):
        return value
    value = value.replace("\r", "\\r").replace("\x00", "\\x00")
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def write_csv(path: str | Path, table: pd.DataFrame) -> None:
    """Write a table as CSV without the index, atomically; text cells that a spreadsheet would take
    for formulas are made inert (``_inert``)."""
    text = [i for i, dtype in enumerate(table.dtypes) if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)]
    if text:
        table = table.copy()
        for i in text:  # by position: a table may repeat a column name
            table.isetitem(i, table.iloc[:, i].map(_inert))
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def text_column(table: pd.DataFrame, name: str) -> pd.Series:
    """A text column of a table as text, '' where a row has none (or where the table lacks the
    column). Read back from a CSV such a column is NaN where empty, and float when every row is:
    filling that with text is what a future pandas refuses, so it is made text first."""
    if name not in table:
        return pd.Series("", index=table.index, dtype=object)
    column = table[name].astype(object)
    return column.where(column.notna(), "").astype(str)


def write_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Write compressed arrays atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)


def read_json(path: str | Path, max_bytes: int = MAX_SMALL_FILE_BYTES):
    """Read a JSON file (a regular file of at most ``max_bytes``: ``untrusted.read_bounded``);
    ValueError for anything else or for text that is not JSON."""
    return json.loads(read_bounded(path, max_bytes))

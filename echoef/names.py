"""Names taken from outside (DICOM PatientID and StudyInstanceUID, folder names, ``--patient``) as
file names: the one way such a name becomes a path.

A study's name names its output folder and files (``OUT/<name>/<name>_row.json``), so a hostile
identifier (``..``, ``/etc``, a name of dots, 300 characters, ``$HOME``) must never lead outside
``--out``, hide a file, or collide with another study's folder.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .errors import StudyError

MAX_NAME = 80  # far below any file system's 255 bytes, with room for "_2CH_ED_gt.nii.gz"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Names Windows reserves whatever the extension (a results folder is often shared with a Windows machine).
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}


def safe_name(identifier: str) -> str:
    """A plain file name for ``identifier``: ASCII letters, digits, '.', '_' and '-' only, starting and
    ending with a letter or digit (never '.', '..', hidden or flag-like), at most ``MAX_NAME``
    characters, no reserved device name.

    An identifier that already is such a name is kept as it is (``patient0001``); any other is cleaned
    and gets the first 8 hex digits of its SHA-256, so two identifiers that clean to the same text
    (``a/b`` and ``a_b``) still name two folders.
    """
    text = str(identifier)
    cleaned = _UNSAFE.sub("_", text).strip("._-")
    if cleaned == text and 0 < len(text) <= MAX_NAME and text.split(".")[0].upper() not in _RESERVED:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    base = cleaned[: MAX_NAME - 15].rstrip("._-") or "study"
    if base.split(".")[0].upper() in _RESERVED:
        base = f"study_{base}"
    return f"{base}-{digest}"


def study_folder(out: Path, name: str) -> Path:
    """``out/<safe_name(name)>``, checked to lie inside ``out``: StudyError('unsafe_output') if it is
    a link or a file (whatever it points at is not this command's to write into)."""
    out = Path(out)
    folder = out / safe_name(name)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise StudyError("unsafe_output", f"{folder} exists and is not a folder of this command's; remove it or use "
                                          "another --out")
    if folder.resolve().parent != out.resolve():  # cannot happen for a safe name; kept as the rule's guard
        raise StudyError("unsafe_output", f"{name!r} would be written outside {out}")
    return folder

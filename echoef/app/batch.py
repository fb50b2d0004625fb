"""What every command over many studies shares: one row per study whatever happens to it, a
summary line that counts the outcomes, an exit status that says whether anything worked, and
checks of the output path before any work is done."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from ..errors import StudyError, UsageError
from ..io.untrusted import regular_file
from ..measure.ef import is_measured

EXIT_OK, EXIT_NONE_MEASURED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def _row(compute: Callable[[object], dict], name: Callable[[object], str], item) -> dict:
    """``compute(item)``, or the row that says why it failed."""
    try:
        return compute(item)
    except StudyError as error:
        return {"patient": name(item), "status": error.reason, "detail": error.detail}
    except Exception as error:  # noqa: BLE001 - a bug or an unforeseen input must cost one study, not the batch
        detail = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        print(f"warning: {name(item)}: unexpected {detail}", file=sys.stderr)
        return {"patient": name(item), "status": "error", "detail": detail}


def each_study(items: Iterable, name: Callable[[object], str], compute: Callable[[object], dict], desc: str,
               workers: int = 1) -> list[dict]:
    """``compute(item)`` for every item, one row each, in the items' order. A StudyError becomes the
    row's status (its reason) and detail; any other exception too (status 'error'), reported on
    stderr: one bad study never stops a batch. With ``workers`` > 1 the items are shared among that
    many processes, never more than the machine has cores (``compute`` and ``name`` must then be
    picklable: module-level functions)."""
    items = list(items)
    one = functools.partial(_row, compute, name)
    progress = {"desc": desc, "total": len(items), "disable": len(items) < 2, "mininterval": 5}
    workers = min(workers, len(items), os.cpu_count() or 1)  # more processes only add memory: each imports it all
    if workers <= 1:
        return [one(item) for item in tqdm(items, **progress)]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(one, items, chunksize=4), **progress))


def outcome_counts(statuses: pd.Series) -> tuple[int, Counter]:
    """(number measured, failures counted by reason: the status up to its first ':')."""
    statuses = statuses.astype(str)
    measured = statuses.map(is_measured)
    return int(measured.sum()), Counter(s.split(":")[0] for s in statuses[~measured])


def summary_line(table: pd.DataFrame, what: str) -> str:
    """'12 studies: 10 ok, 2 failed (bad_labels 1, missing_frame 1)'."""
    ok, failed = outcome_counts(table["status"])
    line = f"{len(table)} {what}: {ok} ok"
    if failed:
        line += f", {sum(failed.values())} failed (" + ", ".join(f"{r} {n}" for r, n in sorted(failed.items())) + ")"
    return line


def exit_status(table: pd.DataFrame) -> int:
    """0 when at least one study was measured, 1 when none was."""
    return EXIT_OK if outcome_counts(table["status"])[0] else EXIT_NONE_MEASURED


def writable_file(path: Path) -> Path:
    """``path`` if a file can be written there (its folder is created); UsageError otherwise, so a
    long batch never ends by failing to save its result."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a file name")
    writable_folder(path.parent)
    return path


def replaceable_file(path: Path, flag: str, kind: str, is_own: Callable[[Path], bool]) -> Path:
    """``path`` as ``writable_file``, where nothing is there yet or what is there is a regular file of the
    command's own ``kind`` (``is_own``: a table or calibrator it wrote before, which a rerun replaces);
    UsageError otherwise, before any work: a user's own file named by mistake is kept, never replaced."""
    path = writable_file(path)
    if os.path.lexists(path) and not (path.is_file() and is_own(path)):
        raise UsageError(f"{flag} {path} holds a file that is not {kind}; it is kept. Give another name")
    return path


def head_text(path: Path, size: int = 1024) -> str:
    """The first ``size`` bytes of a regular file as text ('' for anything else: a FIFO would block)."""
    try:
        with open(regular_file(path), "rb") as handle:
            return handle.read(size).decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return ""


def writable_folder(path: Path) -> Path:
    """``path`` created if need be and checked by writing a file in it; UsageError otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UsageError(f"cannot write to {path}: {error.strerror or error}") from error
    return path


def shard(items: list, spec: str | None, name: Callable[[object], str]) -> list:
    """The items of share I of N (``spec`` 'I/N'): those whose name hashes to I modulo N, a split that
    every copy of a job array computes alike and that adding a study does not reshuffle."""
    if spec is None:
        return items
    index, _, count = spec.partition("/")
    if not (is_index(index) and is_index(count) and int(index) < int(count)):
        raise UsageError(f"--shard {spec}: give I/N with 0 <= I < N, e.g. 0/4 ... 3/4")
    return [item for item in items if int(hashlib.sha256(name(item).encode()).hexdigest(), 16) % int(count) == int(index)]


def is_index(text: str) -> bool:
    """Whether ``text`` is a whole number written in ASCII digits (str.isdigit also takes '²' and
    other Unicode digits, which int() then refuses), of at most 9 digits."""
    return re.fullmatch(r"[0-9]{1,9}", text) is not None


def study_row_path(out: Path, name: str) -> Path:
    """Where a study's row is kept once predicted: what resuming and ``merge`` read."""
    from ..names import safe_name, study_folder

    return study_folder(out, name) / f"{safe_name(name)}_row.json"

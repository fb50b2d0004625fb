"""A cross-validated run kept one fold at a time, for folds that cannot all be trained in one sitting.

A fold of the CPU profile trains for about 100 minutes on a 2-core CPU without bf16. Where the
machine does not keep its disk from one sitting to the next, each fold's out-of-fold tables are kept
in git as soon as that fold is done, and the folds are joined once all of them are there. Only tables
of numbers are kept (per patient: EF, LV Dice, review signals; the fold lists; the training log),
never image data or weights.

  keep WORKSPACE FOLD --out DIR --command TEXT
      after `dvc exp run ... ef_fold@FOLD` finished in WORKSPACE (a clone at a fixed commit): copy
      the fold's tables, training log and dvc.lock entries into DIR/data/cv/FOLD
  join DIR
      once every fold is kept: the out-of-fold EF table (data/ef_cv.csv, by the cv stage's own
      function), the out-of-fold Dice and the folds' spread (metrics/segmentation_cv.json, the cv
      stage's own function too) and a dvc.lock of the pieces

DIR then reads as a run of the folds alone: `compare_runs.py A DIR --cv` (or `DIR B`) compares it out
of fold and `review_limits.py DIR` reads its out-of-fold rows. Every fold must come from the same commit,
parameters and fold lists; the machine and precision may differ, and pieces.json says which fold
had which.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from echoef import machine, params, runfiles
from echoef.errors import UsageError
from echoef.io.atomic import atomic_folder, claim_folder, read_json, write_csv, write_json, write_text
from echoef.measure.ef import is_measured
from echoef.measure.eftable import out_of_fold_table
from echoef.model.segmentation import out_of_fold_dice
from echoef.stats import agreement

FOLDS_FILE = Path("data/cv/folds.json")
PIECES = "pieces.json"
# What a fold leaves in its folder (data/cv/<fold>/) that is kept: numbers per patient and the training log.
FOLD_FILES = (Path("ef.csv"), runfiles.FOLD_REVIEW_SIGNALS, Path("predictions/dice.csv"), Path("model/train_log.json"))
FOLD_STAGES = ("train_fold", "infer_fold", "ef_fold")
MAX_FOLDS = 20


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def read_folds(path: Path) -> dict:
    """A folds file (``{"k": K, "fold_of": {patient: fold}}``, as the split stage writes it), checked:
    K from 2 to ``MAX_FOLDS``, every patient's fold one of them; UsageError otherwise."""
    folds = read_json(path)
    k = folds.get("k") if isinstance(folds, dict) else None
    fold_of = folds.get("fold_of") if isinstance(folds, dict) else None
    if not (isinstance(k, int) and 2 <= k <= MAX_FOLDS and isinstance(fold_of, dict)
            and all(isinstance(fold, int) and 0 <= fold < k for fold in fold_of.values())):
        raise UsageError(f"{path} is not a folds file of 2 to {MAX_FOLDS} folds as the split stage writes it")
    return folds


def fold_names(folds: dict) -> list[str]:
    """The fold names of a checked folds file (``read_folds``)."""
    return params.fold_ids(folds["k"])


def lock_entries(workspace: Path, fold: str) -> dict:
    """The dvc.lock entries of the split and of ``fold``'s train, infer and ef stages; UsageError
    unless the fold's EF table is the one the lock names (a run that finished, not a stale file)."""
    lock = (yaml.safe_load((workspace / runfiles.LOCK).read_text()) or {}).get("stages", {})
    names = ["split", *(f"{stage}@{fold}" for stage in FOLD_STAGES)]
    missing = [name for name in names if name not in lock]
    if missing:
        raise UsageError(f"{workspace}/dvc.lock records no {', '.join(missing)}: run `dvc exp run ... ef_fold@{fold}` there first")
    table = workspace / "data/cv" / fold / "ef.csv"
    stated = next((out.get("md5") for out in lock[f"ef_fold@{fold}"].get("outs", []) if out.get("path") == str(table.relative_to(workspace))), None)
    if stated != md5(table):
        raise UsageError(f"{table} is not the table dvc.lock records for ef_fold@{fold}; run the fold's stages again")
    return {name: lock[name] for name in names}


def read_pieces(out: Path) -> dict:
    """``out``/pieces.json, checked to be what ``keep`` writes (a fold name to its facts)."""
    pieces = read_json(out / PIECES)
    if not (isinstance(pieces, dict) and isinstance(pieces.get("folds"), dict)
            and all(isinstance(facts, dict) and isinstance(facts.get("lock"), dict) for facts in pieces["folds"].values())):
        raise UsageError(f"{out / PIECES} is not what fold_pieces.py keep writes; keep the folds again in a new folder")
    return pieces


def keep(workspace: Path, fold: str, out: Path, command: str, replace: bool = False) -> Path:
    """Copy ``fold``'s out-of-fold tables from ``workspace`` into ``out``/data/cv/``fold``; returns that folder."""
    workspace, out = Path(workspace), Path(out)
    for needed in (runfiles.PARAMS, runfiles.LOCK, FOLDS_FILE):
        if not (workspace / needed).is_file():
            raise UsageError(f"{workspace} holds no {needed}: give the workspace of a run with folds")
    folds = read_folds(workspace / FOLDS_FILE)
    if fold not in fold_names(folds):  # also what keeps the fold's name a plain folder name
        raise UsageError(f"fold {fold!r}: this run's folds are {', '.join(fold_names(folds))}")
    source = workspace / "data/cv" / fold
    missing = [str(name) for name in FOLD_FILES if not (source / name).is_file()]
    if missing:
        raise UsageError(f"{source} lacks {', '.join(missing)}: run `dvc exp run ... ef_fold@{fold}` there first")
    commit = machine.commit(workspace)
    if commit.endswith("+modified") or commit == "unknown":
        raise UsageError(f"{workspace} is at {commit}: a fold is kept only from a clean checkout of a commit")
    entries = lock_entries(workspace, fold)
    out = claim_folder(out)
    pieces = read_pieces(out) if (out / PIECES).is_file() else {"folds": {}}
    for name, mine in ((runfiles.PARAMS, out / runfiles.PARAMS), (FOLDS_FILE, out / FOLDS_FILE)):
        if mine.is_file() and mine.read_bytes() != (workspace / name).read_bytes():
            raise UsageError(f"{workspace / name} differs from the one the folds kept in {out} were made with; "
                             "every fold must come from the same parameters and fold lists")
    if pieces["folds"] and pieces.get("commit") != commit:
        raise UsageError(f"{workspace} is at commit {commit[:12]}, the folds kept in {out} at {str(pieces.get('commit'))[:12]}; "
                         f"check out {str(pieces.get('commit'))[:12]} there")
    target = out / "data/cv" / fold
    if fold in pieces["folds"] and not replace:
        raise UsageError(f"{target} is kept already (made {pieces['folds'][fold]['created']}); --replace to keep it again")
    with atomic_folder(target, "the fold's folder") as folder:
        for name in FOLD_FILES:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, folder / name)
    for name in (runfiles.PARAMS, FOLDS_FILE):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        write_text(out / name, (workspace / name).read_text())
    log = read_json(source / "model/train_log.json")
    log = log if isinstance(log, dict) else {}
    pieces["commit"] = commit
    pieces["folds"][fold] = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command, "commit": commit,
                             "precision": log.get("precision"), "device": log.get("device"),
                             "environment": log.get("environment"), "train_seconds": log.get("train_seconds"),
                             "lock": entries}
    pieces["folds"] = dict(sorted(pieces["folds"].items()))
    write_json(out / PIECES, pieces)
    return target


def join(out: Path) -> pd.DataFrame:
    """The out-of-fold EF table of the folds kept in ``out``, written with the out-of-fold Dice and a
    dvc.lock; UsageError while a fold is missing."""
    out = Path(out)
    if not (out / PIECES).is_file():
        raise UsageError(f"{out} holds no folds kept by `fold_pieces.py keep`")
    pieces, folds = read_pieces(out), read_folds(out / FOLDS_FILE)
    names = fold_names(folds)
    missing = [name for name in names if name not in pieces["folds"]]
    if missing:
        raise UsageError(f"{out}: {len(missing)} of {len(names)} folds not kept yet ({', '.join(missing)})")
    fold_dirs = [out / "data/cv" / name for name in names]
    table = out_of_fold_table(fold_dirs, list(folds["fold_of"]))
    lock = {"schema": "2.0", "stages": {}}
    for name in names:
        lock["stages"].update(pieces["folds"][name]["lock"])
    write_csv(out / runfiles.EF_CV_TABLE, table)
    (out / runfiles.SEGMENTATION_CV_METRICS).parent.mkdir(parents=True, exist_ok=True)
    write_json(out / runfiles.SEGMENTATION_CV_METRICS, out_of_fold_dice(fold_dirs))
    write_text(out / runfiles.LOCK, yaml.safe_dump(lock, sort_keys=False))
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="what", required=True)
    kept = commands.add_parser("keep", help="keep one finished fold of a workspace")
    kept.add_argument("workspace", type=Path)
    kept.add_argument("fold", help="the fold's name (fold_0, ...)")
    kept.add_argument("--out", type=Path, required=True, help="the folder the folds are kept in (results/NAME)")
    kept.add_argument("--command", required=True, help="the command that ran the fold, as it was typed")
    kept.add_argument("--replace", action="store_true", help="keep a fold that is kept already again")
    joined = commands.add_parser("join", help="join the kept folds once all are there")
    joined.add_argument("out", type=Path)
    args = parser.parse_args()
    try:
        if args.what == "keep":
            print(f"kept {keep(args.workspace, args.fold, args.out, args.command, args.replace)}")
        else:
            table = join(args.out)
            measured = table[table["status"].map(is_measured)]
            found = agreement.summary(measured["ef"], measured["ef_ref"])
            print(f"{args.out}: {len(table)} out-of-fold patients, {found['n']} measured; EF before calibration: "
                  f"MAE {found['mae']:.2f}, bias {found['bias']:+.2f}, r {found['r']:.3f}")
            for fold, facts in read_pieces(args.out)["folds"].items():
                cpu = ((facts.get("environment") or {}).get("cpu") or {}).get("model", "?")
                print(f"  {fold}: trained in {facts.get('precision')} on {facts.get('device')} ({cpu}), kept {facts.get('created')}")
    except (UsageError, OSError, ValueError, KeyError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()

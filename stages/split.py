"""Assign patients to train/val/test (the dataset's own lists if it has them, else stratified) and,
with split.folds > 1, to K cross-validation folds over train+val:
split.py COHORT ROOT SPLIT FOLDS SETS_DIR (one sets file per fold: train, val, oof)."""

import shutil
import sys
from pathlib import Path

import pandas as pd

from echoef import camus, params as P, split
from echoef.io import write_json
from echoef.stage import run


def main():
    cohort_path, root, split_path, folds_path, sets_dir = (Path(a) for a in sys.argv[1:6])
    config = P.load().split
    cohort = pd.read_csv(cohort_path)
    lists = camus.read_split_lists(root)
    sets = split.assign(cohort, lists, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed)
    write_json(split_path, {**sets, "source": "database_split" if lists else "stratified"})
    print("split: " + ", ".join(f"{k} {len(v)}" for k, v in sets.items()))
    # Cross-validation folds over train+val (test untouched); {"k": 0} without cross-validation.
    k = config.folds
    folds = (split.assign_folds(cohort, sets["train"] + sets["val"], k, inner_fraction=config.inner_val_fraction, seed=config.seed)
             if k > 1 else {"k": 0})
    write_json(folds_path, folds)
    shutil.rmtree(sets_dir, ignore_errors=True)
    sets_dir.mkdir(parents=True)
    for fold, name in enumerate(P.fold_ids(folds["k"])):
        write_json(sets_dir / f"{name}.json", split.fold_sets(folds, fold))


if __name__ == "__main__":
    run(main)

"""Assign patients to train/val/test (the dataset's own lists if it has them, else stratified) and,
with split.folds > 1, to K cross-validation folds over train+val (one sets file per fold: train, val, oof)."""

import argparse
from pathlib import Path

import pandas as pd

from echoef import params
from echoef.io import camus
from echoef.stage import run
from echoef.stats import split


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cohort", type=Path, required=True, help="ingest's cohort.csv")
    parser.add_argument("--root", type=Path, required=True, help="the dataset (data.root), for its own split lists")
    parser.add_argument("--split", type=Path, required=True, help="the train/val/test lists (JSON)")
    parser.add_argument("--folds", type=Path, required=True, help="each train+val patient's fold (JSON; k = 0 without folds)")
    parser.add_argument("--sets", type=Path, required=True, help="folder of one sets file per fold (replaced)")
    args = parser.parse_args()
    config = params.load().split
    sets, folds = split.write_splits(pd.read_csv(args.cohort), camus.read_split_lists(args.root), config,
                                     args.split, args.folds, args.sets)
    print("split: " + ", ".join(f"{k} {len(v)}" for k, v in sets.items()) + (f"; {folds['k']} folds" if folds["k"] else ""))


if __name__ == "__main__":
    run(main)

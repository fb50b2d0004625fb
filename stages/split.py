"""Assign patients to train/val/test: the dataset's own lists if it has them, else stratified."""

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from echoef import camus, params as P, split  # noqa: E402
from echoef.io import write_json  # noqa: E402
from echoef.stage import run  # noqa: E402


def main():
    params = P.load()
    cohort = pd.read_csv("data/ingested/cohort.csv")
    lists = camus.read_split_lists(params["data"]["root"])
    config = params["split"]
    sets = split.assign(cohort, lists, config["val_fraction"], config["test_fraction"], config["seed"])
    write_json("data/split.json", {**sets, "source": "database_split" if lists else "stratified"})
    print("split: " + ", ".join(f"{k} {len(v)}" for k, v in sets.items()))
    # Cross-validation folds over train+val (test untouched); {"k": 0} without cross-validation.
    k = config["folds"]
    folds = split.assign_folds(cohort, sets["train"] + sets["val"], k, config["inner_val_fraction"], config["seed"]) if k > 1 else {"k": 0}
    write_json("data/cv/folds.json", folds)


if __name__ == "__main__":
    run(main)

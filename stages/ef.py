"""EF of each predicted patient, and of its expert masks as a ceiling.

Plain mode: val and test patients (data/predictions) -> data/ef.csv.
``--fold K``: fold K's held-out patients (data/cv/fold_K/predictions) -> data/cv/fold_K/ef.csv.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from echoef import params as P, split  # noqa: E402
from echoef.ef import ef_table  # noqa: E402
from echoef.io import read_json, write_csv  # noqa: E402
from echoef.stage import run  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fold", type=int)
    args = parser.parse_args()
    method = P.load()["ef"]["method"]
    cohort = pd.read_csv("data/ingested/cohort.csv")
    if args.fold is None:
        sets, predictions, out = read_json("data/split.json"), Path("data/predictions"), Path("data/ef.csv")
        sets = {k: sets[k] for k in ("val", "test")}
    else:
        fold_dir = Path(f"data/cv/fold_{args.fold}")
        sets = {"oof": split.fold_sets(read_json("data/cv/folds.json"), args.fold)["held_out"]}
        predictions, out = fold_dir / "predictions", fold_dir / "ef.csv"
    table = pd.concat([ef_table(patients, predictions, cohort, method).assign(set=subset)
                       for subset, patients in sets.items()], ignore_index=True)
    if args.fold is not None:
        table["fold"] = args.fold
    write_csv(out, table)
    bad = table[~table["status"].str.startswith("ok")]
    print(f"ef: {len(table)} patients by {method}; {len(bad)} without an EF from the predicted masks")


if __name__ == "__main__":
    run(main)

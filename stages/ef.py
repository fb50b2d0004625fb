"""EF of each predicted patient, and of its expert masks as a ceiling.

ef.py --predictions DIR --ingested DIR --sets FILE --subsets NAME [NAME ...] --out CSV: the main
model's val and test predictions and each fold's out-of-fold ones are this one script with other paths.
"""

import argparse
from pathlib import Path

import pandas as pd

from echoef import params as P
from echoef.eftable import ef_table
from echoef.io import read_json, write_csv
from echoef.stage import run


def main():
    parser = argparse.ArgumentParser()
    for name in ("--predictions", "--ingested", "--sets", "--out"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--subsets", nargs="+", required=True)
    args = parser.parse_args()
    method = P.load().ef.method
    cohort = pd.read_csv(args.ingested / "cohort.csv")
    sets = read_json(args.sets)
    table = pd.concat([ef_table(sets[subset], args.predictions, cohort, method, args.ingested).assign(set=subset)
                       for subset in args.subsets], ignore_index=True)
    write_csv(args.out, table)
    bad = table[~table["status"].str.startswith("ok")]
    print(f"ef: {len(table)} patients by {method}; {len(bad)} without an EF from the predicted masks")


if __name__ == "__main__":
    run(main)

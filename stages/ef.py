"""EF of each predicted patient, and of its expert masks as a ceiling.

ef.py --predictions DIR --ingested DIR --sets FILE --subsets NAME [NAME ...] --out CSV: the main
model's val and test predictions and each fold's out-of-fold ones are this one script with other paths.
"""

import argparse
from pathlib import Path

import pandas as pd

from echoef import params
from echoef.io.atomic import read_json, write_csv
from echoef.measure.eftable import ef_table
from echoef.stage import run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, what in (("--predictions", "the predicted label maps"), ("--ingested", "ingest's frame files"),
                       ("--sets", "JSON of patient lists"), ("--out", "the EF table (CSV)")):
        parser.add_argument(name, type=Path, required=True, help=what)
    parser.add_argument("--subsets", nargs="+", required=True, help="which lists of the sets file to measure")
    args = parser.parse_args()
    method = params.load().ef.method
    cohort = pd.read_csv(args.ingested / "cohort.csv")
    sets = read_json(args.sets)
    table = pd.concat([ef_table(sets[subset], args.predictions, cohort, method, args.ingested).assign(set=subset)
                       for subset in args.subsets], ignore_index=True)
    write_csv(args.out, table)
    bad = table[~table["status"].str.startswith("ok")]
    print(f"ef: {len(table)} patients by {method}; {len(bad)} without an EF from the predicted masks")


if __name__ == "__main__":
    run(main)

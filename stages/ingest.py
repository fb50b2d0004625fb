"""Read a CAMUS folder into per-patient frame files with cohort and exclusion tables."""

import argparse
from pathlib import Path

from echoef import params
from echoef.io import ingest
from echoef.io.atomic import remove_stage_output, write_json
from echoef.stage import run


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="a CAMUS folder of either layout (data.root)")
    parser.add_argument("--out", type=Path, required=True, help="the frame files, cohort.csv and exclusions.csv (replaced)")
    parser.add_argument("--metrics", type=Path, required=True, help="counts of included and excluded patients")
    args = parser.parse_args()
    remove_stage_output(args.out, ingest.WRITTEN)
    cohort, exclusions = ingest.ingest(args.root, args.out, strict=params.load().ingest.strict)
    write_json(args.metrics, ingest.counts(cohort, exclusions))
    print(f"ingest: {len(cohort)} patients included, {len(exclusions)} excluded ({args.out / 'exclusions.csv'})")


if __name__ == "__main__":
    run(main)

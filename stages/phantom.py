"""Write the synthetic CAMUS cohort (the default data.root) in the 2023 layout."""

import argparse
from pathlib import Path

from echoef import params
from echoef.io import phantom
from echoef.io.atomic import remove_stage_output
from echoef.stage import run


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="the cohort's folder (replaced)")
    args = parser.parse_args()
    config = params.load().data.phantom
    remove_stage_output(args.out, phantom.WRITTEN)
    names = phantom.write_cohort(args.out, n_patients=config.n_patients, seed=config.seed)
    print(f"phantom: {len(names)} synthetic patients in {args.out}")


if __name__ == "__main__":
    run(main)

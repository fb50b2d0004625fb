"""Write the synthetic CAMUS cohort (the default data.root) in the 2023 layout: phantom.py OUT."""

import shutil
import sys
from pathlib import Path

from echoef import params as P, phantom
from echoef.stage import run


def main():
    out = Path(sys.argv[1])
    config = P.load().data.phantom
    shutil.rmtree(out, ignore_errors=True)
    names = phantom.write_cohort(out, n_patients=config.n_patients, seed=config.seed)
    print(f"phantom: {len(names)} synthetic patients in {out}")


if __name__ == "__main__":
    run(main)

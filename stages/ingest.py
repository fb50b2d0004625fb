"""Read a CAMUS folder into per-patient frame files with cohort and exclusion tables:
ingest.py ROOT OUT_DIR METRICS."""

import shutil
import sys
from pathlib import Path

from echoef import ingest, params as P
from echoef.io import write_json
from echoef.stage import run


def main():
    root, out, metrics = (Path(a) for a in sys.argv[1:4])
    shutil.rmtree(out, ignore_errors=True)
    cohort, exclusions = ingest.ingest(root, out, strict=P.load().ingest.strict)
    write_json(metrics, {"n_included": len(cohort), "n_excluded": len(exclusions),
                         **{f"excluded_{k}": int(v) for k, v in exclusions["reason"].value_counts().items()}})
    print(f"ingest: {len(cohort)} patients included, {len(exclusions)} excluded ({out / 'exclusions.csv'})")


if __name__ == "__main__":
    run(main)

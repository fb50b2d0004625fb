"""Read the CAMUS folder at data.root into data/ingested (one .npz per patient + tables)."""

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from echoef import dataset, params as P  # noqa: E402
from echoef.io import write_json  # noqa: E402
from echoef.stage import run  # noqa: E402

OUT = dataset.INGESTED


def main():
    params = P.load()
    shutil.rmtree(OUT, ignore_errors=True)
    cohort, exclusions = dataset.ingest(params["data"]["root"], OUT, params["ingest"]["strict"])
    write_json("metrics/ingest.json", {"n_included": len(cohort), "n_excluded": len(exclusions),
                                       **{f"excluded_{k}": int(v) for k, v in exclusions["reason"].value_counts().items()}})
    print(f"ingest: {len(cohort)} patients included, {len(exclusions)} excluded (data/ingested/exclusions.csv)")


if __name__ == "__main__":
    run(main)

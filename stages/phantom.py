"""Write the synthetic CAMUS cohort (the default data.root) in the 2023 layout."""

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from echoef import params as P, phantom  # noqa: E402

OUT = Path("data/phantom")

if __name__ == "__main__":
    config = P.load()["data"]["phantom"]
    shutil.rmtree(OUT, ignore_errors=True)
    names = phantom.write_cohort(OUT, config["n_patients"], config["seed"])
    print(f"phantom: {len(names)} synthetic patients in {OUT}")

"""EF of every val/test patient from the predicted masks and, as a ceiling, from the expert masks."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from echoef import camus, dataset, params as P  # noqa: E402
from echoef.ef import label_maps, patient_ef  # noqa: E402
from echoef.io import read_json, write_csv  # noqa: E402
from echoef.stage import run  # noqa: E402


def main():
    method = P.load()["ef"]["method"]
    split = read_json("data/split.json")
    cohort = pd.read_csv("data/ingested/cohort.csv").set_index("patient")
    rows = []
    for subset in ("val", "test"):
        for patient in split[subset]:
            expert = dataset.load_frames(f"data/ingested/{patient}.npz")
            with np.load(f"data/predictions/{patient}.npz") as data:
                predicted = {(v, p): (data[f"{v}_{p}_label"], tuple(data[f"{v}_{p}_spacing_mm"])) for v, p in camus.FRAME_KEYS}
            pred = patient_ef(predicted, method)
            ceiling = patient_ef(label_maps(expert), method)
            rows.append({"patient": patient, "set": subset, **pred,
                         "edv_expert_ml": ceiling["edv_ml"], "esv_expert_ml": ceiling["esv_ml"],
                         "ef_expert": ceiling["ef"], "status_expert": ceiling["status"],
                         "ef_ref": cohort.loc[patient, "ef_ref"], "quality": cohort.loc[patient, "quality_2ch"]})
    table = pd.DataFrame(rows)
    write_csv("data/ef.csv", table)
    bad = table[~table["status"].str.startswith("ok")]
    print(f"ef: {len(table)} patients by {method}; {len(bad)} without an EF from the predicted masks")


if __name__ == "__main__":
    run(main)

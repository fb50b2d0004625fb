"""Fit the EF calibrator on the validation patients only."""

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from echoef import agreement, calibration, params as P  # noqa: E402
from echoef.status import is_measured  # noqa: E402
from echoef.io import write_json  # noqa: E402
from echoef.stage import run  # noqa: E402


def main():
    config = P.load()["calibration"]
    table = pd.read_csv("data/ef.csv")
    val = table[(table["set"] == "val") & table["status"].map(is_measured)]
    # The fit set: the validation patients, or (a small validation set) every train+val patient's
    # out-of-fold prediction from cross-validation. Never a test patient.
    fit_rows = val if config["fit_set"] == "val" else pd.read_csv("data/ef_cv.csv").pipe(lambda t: t[t["status"].map(is_measured)])
    calibrator = calibration.fit(fit_rows["ef"], fit_rows["ef_ref"], config["method"], tuple(config["ef_range"]), config["fit_set"])
    before = agreement.summary(val["ef"], val["ef_ref"])["mae"]
    after = agreement.summary(calibration.apply(calibrator, val["ef"]), val["ef_ref"])["mae"]
    calibrator.update(ef_method=str(table["method"].iloc[0]), val_mae_before=before, val_mae_after=after, worsens_val=bool(after > before))
    write_json("models/calibrator.json", calibrator)
    note = " (WORSE than uncalibrated on validation)" if after > before else ""
    print(f"calibrate: {config['method']} fitted on {len(fit_rows)} {config['fit_set']} patients, "
          f"val MAE {before:.2f} -> {after:.2f}{note}")


if __name__ == "__main__":
    run(main)

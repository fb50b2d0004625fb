"""Fit the EF calibrator, never on a test patient: calibrate.py EF_CSV OOF_CSV OUT."""

import sys
from pathlib import Path

import pandas as pd

from echoef import agreement, calibration, params as P
from echoef.ef import is_measured
from echoef.io import write_json
from echoef.stage import run


def main():
    ef_path, oof_path, out = (Path(a) for a in sys.argv[1:4])
    params = P.load()
    config = params.calibration
    table = pd.read_csv(ef_path)
    val = table[(table["set"] == "val") & table["status"].map(is_measured)]
    # The fit set: the validation patients, or (a small validation set) every train+val patient's
    # out-of-fold prediction from cross-validation.
    fit_rows = val if config.fit_set == "val" else pd.read_csv(oof_path).pipe(lambda t: t[t["status"].map(is_measured)])
    calibrator = calibration.fit(fit_rows["ef"], fit_rows["ef_ref"], config.method, tuple(config.ef_range), config.fit_set,
                                 features=fit_rows)
    val_calibrated = calibration.apply(calibrator, val["ef"], val)
    before = agreement.summary(val["ef"], val["ef_ref"])["mae"]
    after = agreement.summary(val_calibrated, val["ef_ref"])["mae"]
    calibrator.update(ef_method=str(table["method"].iloc[0]), val_mae_before=before, val_mae_after=after, worsens_val=bool(after > before),
                      interval=calibration.conformal_half_width(val_calibrated, val["ef_ref"], params.evaluate.interval))
    write_json(out, {**calibrator, "fingerprint": calibration.fingerprint(calibrator)})
    note = " (WORSE than uncalibrated on validation)" if after > before else ""
    print(f"calibrate: {config.method} fitted on {len(fit_rows)} {config.fit_set} patients, "
          f"val MAE {before:.2f} -> {after:.2f}{note}; {100 * params.evaluate.interval:.0f}% interval "
          f"± {calibrator['interval']['half_width'] or float('nan'):.1f}")


if __name__ == "__main__":
    run(main)

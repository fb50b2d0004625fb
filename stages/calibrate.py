"""Fit the EF calibrator (never on a test patient) and its prediction interval."""

import argparse
from pathlib import Path

import pandas as pd

from echoef import params
from echoef.io.atomic import write_json
from echoef.model import novelty
from echoef.stage import run
from echoef.stats import agreement, calibration


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ef", type=Path, required=True, help="the EF table of the val and test patients")
    parser.add_argument("--oof", type=Path, required=True, help="the out-of-fold EF table (calibration.fit_set: oof)")
    parser.add_argument("--out", type=Path, required=True, help="the calibrator (JSON)")
    parser.add_argument("--novelty-features", type=Path, required=True, help="infer's novelty features of the val and test patients")
    parser.add_argument("--novelty-out", type=Path, required=True, help="the unlike-training reference and threshold (JSON)")
    args = parser.parse_args()
    settings = params.load()
    config = settings.calibration
    calibrator, fit_count = agreement.pipeline_calibrator(pd.read_csv(args.ef), args.oof, config, settings.evaluate.interval)
    write_json(args.out, {**calibrator, "fingerprint": calibration.fingerprint(calibrator)})
    note = " (WORSE than uncalibrated on validation)" if calibrator["worsens_val"] else ""
    print(f"calibrate: {config.method} fitted on {fit_count} {config.fit_set} patients, "
          f"val MAE {calibrator['val_mae_before']:.2f} -> {calibrator['val_mae_after']:.2f}{note}; "
          f"{100 * settings.evaluate.interval:.0f}% interval ± {calibrator['interval']['half_width'] or float('nan'):.1f}")
    reference = novelty.pipeline_reference(pd.read_csv(args.novelty_features))
    write_json(args.novelty_out, reference)
    print(f"calibrate: unlike_training flags {novelty.rate_text(reference)}")


if __name__ == "__main__":
    run(main)

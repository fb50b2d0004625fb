"""Agreement of predicted EF with the reference on test (and validation), before and after
calibration: a headline for DVC's metric views, the full statistics, plots and a self-contained report.

evaluate.py --ef CSV --oof CSV --ensemble-ef CSV --calibrator JSON --ingested DIR --predictions DIR
--metrics JSON --cv-metrics JSON --full JSON --plots DIR --report HTML --report-md MD
"""

import argparse
from pathlib import Path

import pandas as pd

from echoef import machine, params, runfiles
from echoef.errors import UsageError
from echoef.io.atomic import read_json, write_json, write_text
from echoef.measure.ef import is_measured
from echoef.reporting import figures, report
from echoef.stage import run
from echoef.stats import agreement, calibration


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, what in (("--ef", "the EF table of the val and test patients"), ("--oof", "the out-of-fold EF table"),
                       ("--ensemble-ef", "the fold ensemble's EF table of the test patients"), ("--calibrator", "the calibrator"),
                       ("--ingested", "ingest's frame files"), ("--predictions", "the predicted label maps"),
                       ("--metrics", "headline metrics of the test list (JSON)"), ("--cv-metrics", "headline of cross-validation"),
                       ("--full", "every statistic (JSON)"), ("--plots", "plot tables and figures"), ("--report", "the HTML report"),
                       ("--report-md", "the Markdown report")):
        parser.add_argument(name, type=Path, required=True, help=what)
    args = parser.parse_args()
    settings = params.load()
    config = settings.evaluate
    table = pd.read_csv(args.ef)
    try:
        calibrator = calibration.validate(read_json(args.calibrator))
    except ValueError as error:
        raise UsageError(f"{args.calibrator}: refused: {error}") from error
    if calibrator.get("fingerprint") != calibration.fingerprint(calibrator):  # DVC re-runs this stage on the fingerprint alone
        raise UsageError(f"{args.calibrator} was changed by hand (its fingerprint no longer matches); run dvc repro -f -s calibrate")
    full = {subset: agreement.set_report(rows, calibration.apply(calibrator, rows["ef"], rows), config.bootstrap, config.seed)
            for subset, rows in ((s, table[table["set"] == s]) for s in ("test", "val"))}
    full["cv"] = agreement.cross_validation_report(pd.read_csv(args.oof), pd.read_csv(args.ensemble_ef), calibrator,
                                                   config.bootstrap, config.seed)
    write_json(args.metrics, report.ef_headline(full["test"], full["val"]))
    write_json(args.cv_metrics, report.cv_headline(full["cv"]))

    test = table[(table["set"] == "test") & table["status"].map(is_measured)].copy()
    test["ef_calibrated"] = calibration.apply(calibrator, test["ef"], test)
    made = {("n_validation" if key == "n" else key): value for key, value in calibrator.get("interval", {}).items()}
    full["test"]["interval"] = {**made, **calibration.interval_report(calibrator, test["ef_calibrated"], test["ef_ref"])}
    write_json(args.full, full)
    worst, cases = figures.worst_cases(test, config.overlays, args.ingested, args.predictions)
    figures.write_plots(test, full["test"], calibrator, cases, args.plots)
    about = {"profile": settings.profile, "commit": machine.commit(), "params": runfiles.PARAMS.read_text()}
    page, markdown = report.render(full["test"], worst, about, args.plots, "../" + args.plots.name)
    for path, text in ((args.report, page), (args.report_md, markdown)):
        write_text(path, text)
    pre, post = full["test"]["pre"], full["test"]["post"]
    print(f"evaluate: test n={post['n']} (failed {full['test']['n_failed']}): MAE {pre['mae']:.2f} -> {post['mae']:.2f}, "
          f"bias {pre['bias']:+.2f} -> {post['bias']:+.2f}, r {post['r']:.3f}")


if __name__ == "__main__":
    run(main)

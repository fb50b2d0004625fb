"""Agreement of predicted EF with the reference on test (and validation), before and after
calibration: a headline for DVC's metric views, the full statistics, plots and a self-contained report.

evaluate.py --ef CSV --oof CSV --ensemble-ef CSV --calibrator JSON --ingested DIR --predictions DIR
--metrics JSON --cv-metrics JSON --full JSON --plots DIR --report HTML --report-md MD
"""

import argparse
from pathlib import Path

import pandas as pd

from echoef import agreement, calibration, figures, framefile, machine, params as P, report
from echoef.ef import ef_class, is_measured
from echoef.errors import UsageError
from echoef.framefile import patient_path
from echoef.io import read_json, write_csv, write_json, write_text
from echoef.stage import run

CLASS_NAMES = ("<40", "40-49", ">=50")


def worst_cases(test: pd.DataFrame, count: int, ingested: Path, predictions: Path) -> tuple[list[dict], list[dict]]:
    """The ``count`` measured test patients with the largest calibrated EF error: their rows, and
    their frames for the overlay figure."""
    worst = test.assign(error=(test["ef_calibrated"] - test["ef_ref"]).abs()).nlargest(count, "error")
    cases = []
    for row in worst.itertuples():
        expert, predicted = framefile.load(patient_path(row.patient, ingested)), framefile.load(predictions / f"{row.patient}.npz")
        cases.append({"title": f"{row.patient} EF {row.ef_calibrated:.0f} vs {row.ef_ref:.0f}",
                      "frames": {k: (f.image, f.label, predicted[k].label, f.spacing_mm) for k, f in expert.items()}})
    return worst.to_dict(orient="records"), cases


def write_plots(test: pd.DataFrame, stats: dict, calibrator: dict, cases: list[dict], plots: Path) -> None:
    """The plot tables DVC draws (scatter, Bland-Altman, EF-class confusion) and the PNG figures."""
    write_csv(plots / "ef_scatter.csv", test[["patient", "ef_ref", "ef", "ef_calibrated"]].rename(columns={"ef": "ef_pred"}))
    write_csv(plots / "bland_altman.csv", pd.concat([
        pd.DataFrame({"patient": test["patient"], "stage": stage, "mean": (v + test["ef_ref"]) / 2, "diff": v - test["ef_ref"]})
        for stage, v in (("pre", test["ef"]), ("post", test["ef_calibrated"]))]))
    write_csv(plots / "ef_classes.csv", pd.DataFrame({
        "patient": test["patient"], "reference": [CLASS_NAMES[c] for c in ef_class(test["ef_ref"].to_numpy())],
        "predicted": [CLASS_NAMES[c] for c in ef_class(test["ef_calibrated"].to_numpy())]}))
    figures.scatter(test["ef_ref"], test["ef"], test["ef_calibrated"], plots / "ef_scatter.png")
    figures.bland_altman(test["ef_ref"], test["ef"], test["ef_calibrated"], stats["pre"], stats["post"], plots / "bland_altman.png")
    figures.calibration_curve(calibrator, test, plots / "calibration.png")
    figures.confusion(stats["post"]["confusion"], plots / "ef_classes.png")
    figures.overlays(cases, plots / "overlays.png")


def main():
    parser = argparse.ArgumentParser()
    for name in ("--ef", "--oof", "--ensemble-ef", "--calibrator", "--ingested", "--predictions", "--metrics",
                 "--cv-metrics", "--full", "--plots", "--report", "--report-md"):
        parser.add_argument(name, type=Path, required=True)
    args = parser.parse_args()
    params = P.load()
    config = params.evaluate
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
    worst, cases = worst_cases(test, config.overlays, args.ingested, args.predictions)
    write_plots(test, full["test"], calibrator, cases, args.plots)
    about = {"profile": params.profile, "commit": machine.commit(), "params": Path("params.yaml").read_text()}
    page, markdown = report.render(full["test"], worst, about, args.plots, "../" + args.plots.name)
    for path, text in ((args.report, page), (args.report_md, markdown)):
        write_text(path, text)
    pre, post = full["test"]["pre"], full["test"]["post"]
    print(f"evaluate: test n={post['n']} (failed {full['test']['n_failed']}): MAE {pre['mae']:.2f} -> {post['mae']:.2f}, "
          f"bias {pre['bias']:+.2f} -> {post['bias']:+.2f}, r {post['r']:.3f}")


if __name__ == "__main__":
    run(main)

"""Where a run's EF error comes from: its EF recomputed with the expert mask put in place of one
predicted frame (or pair of frames) at a time, and its volumes' errors by the heart's reference EF.
(How alike two runs' errors are: compare_runs.py.)

Usage: python benchmarks/ef_error_sources.py RUN [--sets val test]
RUN is a pipeline workspace after `dvc repro` (data/ingested, data/split.json, data/predictions).
Errors are against the reference EF, before calibration.
"""

import argparse
from pathlib import Path

import pandas as pd
from scipy import stats

from echoef import runfiles
from echoef.io import camus
from echoef.io.atomic import read_json
from echoef.io.framefile import load as load_frames, patient_path
from echoef.measure import ef, eftable

SUBSTITUTIONS = {"none": [], **{f"{v} {p}": [(v, p)] for v, p in camus.FRAME_KEYS},
                 **{f"both {p}": [(v, p) for v in camus.VIEWS] for p in camus.PHASES},
                 **{f"both {v}": [(v, p) for p in camus.PHASES] for v in camus.VIEWS}}


def substituted_ef(run: Path, patient: str) -> dict:
    """EF of one patient's predicted masks with each substitution of expert masks."""
    predicted = eftable.load_predictions(patient_path(patient, run / runfiles.PREDICTIONS))
    expert = ef.label_maps(load_frames(patient_path(patient, run / runfiles.INGESTED)))
    return {name: ef.patient_ef({**predicted, **{k: expert[k] for k in keys}}, "simpson_biplane")["ef"]
            for name, keys in SUBSTITUTIONS.items()}


def error_table(run: Path, patients: list[str]) -> pd.DataFrame:
    """Signed EF error (predicted minus reference) per patient and substitution."""
    cohort = pd.read_csv(run / runfiles.COHORT).set_index("patient")
    rows = {p: substituted_ef(run, p) for p in patients}
    return pd.DataFrame(rows).T.sub(cohort.loc[patients, "ef_ref"], axis=0)


REFERENCE_EF_BANDS = [0, 40, 55, 100]  # reduced, mid-range, normal to high (percent)


def volume_errors(run: Path, patients: list[str]) -> pd.DataFrame:
    """Per patient: reference EF, the EF error and the predicted EDV's and ESV's relative errors
    against the expert masks' (Simpson biplane, before calibration); measured patients only."""
    cohort = pd.read_csv(run / runfiles.COHORT).set_index("patient")
    rows = {}
    for patient in patients:
        predicted = ef.patient_ef(eftable.load_predictions(patient_path(patient, run / runfiles.PREDICTIONS)),
                                  "simpson_biplane")
        expert = ef.patient_ef(ef.label_maps(load_frames(patient_path(patient, run / runfiles.INGESTED))),
                               "simpson_biplane")
        if ef.is_measured(predicted["status"]) and ef.is_measured(expert["status"]):
            rows[patient] = {"ef_ref": cohort.loc[patient, "ef_ref"], "ef_error": predicted["ef"] - cohort.loc[patient, "ef_ref"],
                             "edv_rel_error": predicted["edv_ml"] / expert["edv_ml"] - 1,
                             "esv_rel_error": predicted["esv_ml"] / expert["esv_ml"] - 1}
    return pd.DataFrame(rows).T.astype(float)


def print_bands(errors: pd.DataFrame) -> None:
    """Mean errors per reference-EF band, and Spearman's rho of each volume error with the reference EF:
    a volume read towards a typical heart errs one way in small hearts' and the other in large ones'."""
    bands = pd.cut(errors["ef_ref"], REFERENCE_EF_BANDS)
    for band, group in errors.groupby(bands, observed=True):
        print(f"  reference EF {str(band):9s} n {len(group):3d}  EF error {group['ef_error'].mean():+5.2f}  "
              f"EDV {100 * group['edv_rel_error'].mean():+5.1f}%  ESV {100 * group['esv_rel_error'].mean():+5.1f}%")
    for column in ("edv_rel_error", "esv_rel_error"):
        rho, p_value = stats.spearmanr(errors[column], errors["ef_ref"])
        print(f"  {column} against reference EF: Spearman rho {rho:+.2f} (p {p_value:.2g})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--sets", nargs="+", default=["val", "test"])
    args = parser.parse_args()
    split = read_json(args.run / "data/split.json")
    for subset in args.sets:
        errors = error_table(args.run, split[subset]).dropna()
        print(f"{subset} (n = {len(errors)}): EF error with the expert mask in place of")
        for name in SUBSTITUTIONS:
            e = errors[name]
            print(f"  {name:9s} MAE {e.abs().mean():5.2f}  bias {e.mean():+5.2f}  SD {e.std():5.2f}")
        print(f"{subset}: volume errors against the expert masks' by reference EF")
        print_bands(volume_errors(args.run, split[subset]))


if __name__ == "__main__":
    main()

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

from echoef import runfiles
from echoef.io import camus
from echoef.io.atomic import read_json
from echoef.io.framefile import load as load_frames, patient_path
from echoef.measure import ef, eftable
from echoef.stats import agreement

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


def print_by_reference_class(rows: pd.DataFrame) -> None:
    """The rows' EF bias and volume errors against the expert masks' by reference EF class, as the
    evaluation report gives them (``agreement.by_reference_class``), before calibration."""
    found = agreement.by_reference_class(rows, rows["ef"])
    for name, row in found["classes"].items():
        print(f"  reference EF {name:6s} n {row['n']:3d}  EF error {row['bias_pre']:+5.2f}  "
              f"EDV {100 * row['edv_relative_error']:+5.1f}%  ESV {100 * row['esv_relative_error']:+5.1f}%")
    print(f"  Spearman rho with the reference EF: EDV error {found['edv_error_rho']:+.2f}, ESV error {found['esv_error_rho']:+.2f}")


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
        print(f"{subset}: volume errors against the expert masks' by reference EF class")
        table = pd.read_csv(args.run / runfiles.EF_TABLE)
        print_by_reference_class(table[table["patient"].isin(split[subset])])


if __name__ == "__main__":
    main()

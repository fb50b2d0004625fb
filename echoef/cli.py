"""Command line: ``python -m echoef ef ROOT --out FILE.csv``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from . import camus, simpson
from .ef import label_maps, patient_ef
from .io import write_csv


def ef_command(args) -> int:
    """EF of every patient folder under ROOT from its masks (expert, or ``--labels`` elsewhere)."""
    rows = []
    for folder in camus.find_patients(args.root):
        try:
            study = camus.read_study(folder, labels_dir=args.labels)
        except camus.StudyError as error:
            rows.append({"patient": folder.name, "method": args.method, "edv_ml": None, "esv_ml": None,
                         "ef": None, "ef_ref": None, "status": f"unreadable:{error.reason}"})
            continue
        result = patient_ef(label_maps(study.frames), args.method)
        rows.append({"patient": study.patient, **result, "ef_ref": study.ef_ref})
    if not rows:
        print(f"error: no patientXXXX folder under {args.root}", file=sys.stderr)
        return 2
    table = pd.DataFrame(rows, columns=["patient", "method", "edv_ml", "esv_ml", "ef", "ef_ref", "status"])
    write_csv(args.out, table)
    ok = table["status"].astype(str).str.startswith("ok").sum()
    print(f"{len(table)} patients, {ok} with an EF, written to {args.out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m echoef", description="EchoEF command line")
    commands = parser.add_subparsers(dest="command", required=True)
    ef = commands.add_parser("ef", help="EF from the masks of a CAMUS-layout folder (2019 or 2023 release)")
    ef.add_argument("root", type=Path, help="CAMUS root (holding database_nifti/ or patient folders)")
    ef.add_argument("--out", type=Path, required=True, help="CSV to write")
    ef.add_argument("--labels", type=Path, default=None,
                    help="folder of predicted masks named like the expert ones (patientXXXX/patientXXXX_2CH_ED_gt.nii.gz)")
    ef.add_argument("--method", default="simpson_biplane", choices=simpson.METHODS)
    args = parser.parse_args(argv)
    return ef_command(args)

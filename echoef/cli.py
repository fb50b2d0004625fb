"""Command line: ``python -m echoef ef ROOT --out FILE.csv``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from . import camus, model as M, simpson
from .ef import label_maps, patient_ef
from .io import read_json, write_csv, write_json
from .params import PRECISIONS
from .predict import predict_study


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


def predict_command(args) -> int:
    """Segment new studies with the trained model; label maps, EF (raw and calibrated), overlays."""
    studies = {}
    for folder in args.inputs:
        try:
            studies[folder.name] = camus.image_paths(folder)
        except (camus.StudyError, FileNotFoundError, NotADirectoryError) as error:
            print(f"error: {folder}: not a CAMUS patient folder ({error})", file=sys.stderr)
            return 2
    files = {key: path for key, path in ((("2CH", "ED"), args.a2c_ed), (("2CH", "ES"), args.a2c_es),
                                         (("4CH", "ED"), args.a4c_ed), (("4CH", "ES"), args.a4c_es)) if path}
    if files:
        studies[args.patient] = files
    if not studies:
        print("error: give patient folders, or image files with --2ch-ed/--2ch-es/--4ch-ed/--4ch-es", file=sys.stderr)
        return 2
    try:
        models, state = M.load_checkpoint(args.model, M.resolve_device(args.device))
        calibrator = read_json(args.calibrator)
    except (M.CheckpointError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config = {"batch_size": args.batch_size, "tta": args.tta, "precision": args.precision}
    rows = []
    for patient, paths in tqdm(studies.items(), desc="predict", disable=len(studies) < 2):
        try:
            rows.append(predict_study(patient, paths, models, state["model_config"]["input_size"], calibrator, config, args.out))
        except camus.StudyError as error:
            rows.append({"patient": patient, "status": f"failed:{error.reason}"})
    table = pd.DataFrame(rows, columns=["patient", "method", "edv_ml", "esv_ml", "ef", "ef_calibrated", "status", "frames"])
    write_csv(args.out / "summary.csv", table)
    write_json(args.out / "summary.json", table.to_dict(orient="records"))
    print(f"{len(table)} studies, {table['status'].astype(str).str.startswith('ok').sum()} with an EF, in {args.out}")
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
    predict = commands.add_parser("predict", help="segment new studies and estimate EF with the trained pipeline")
    predict.add_argument("inputs", type=Path, nargs="*", help="CAMUS-layout patient folders (2019 or 2023)")
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    for view, phase in camus.FRAME_KEYS:
        predict.add_argument(f"--{view.lower()}-{phase.lower()}", dest=f"a{view[0]}c_{phase.lower()}", type=Path,
                             help=f"a {view} {phase} image file (NIfTI or MetaImage)")
    predict.add_argument("--patient", default="study", help="name for the study given as files")
    predict.add_argument("--model", type=Path, default=Path("models/segmenter.pt"))
    predict.add_argument("--calibrator", type=Path, default=Path("models/calibrator.json"))
    predict.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    predict.add_argument("--batch-size", type=int, default=16)
    predict.add_argument("--tta", action="store_true", help="average over three image gammas (test-time augmentation)")
    predict.add_argument("--precision", default="auto", choices=PRECISIONS,
                         help="bf16: mixed precision (auto: bf16 where the GPU or CPU has native bfloat16, else float32)")
    args = parser.parse_args(argv)
    return ef_command(args) if args.command == "ef" else predict_command(args)

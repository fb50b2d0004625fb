"""Predict label maps on the native grids, with Dice against the expert labels.

infer.py --model FILE [FILE ...] --ingested DIR --sets FILE --subsets NAME [NAME ...] --out DIR --dice CSV
[--metrics JSON --full JSON]: the main model on val and test (data/split.json) and each fold's model on its
out-of-fold patients are this one script with other paths. Several model files are one ensemble (the
mean of all their networks' softmax, as cv's fold ensemble).
"""

import argparse
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from echoef import params
from echoef.errors import StudyError
from echoef.io.atomic import read_json, remove_stage_output, write_csv, write_json
from echoef.io.framefile import FRAME_FILES, patient_path
from echoef.model import runtime, segmentation
from echoef.model.network import load_ensemble
from echoef.reporting import report
from echoef.stage import run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, nargs="+", required=True, help="the model file(s): several are one ensemble")
    for name, what in (("--ingested", "ingest's frame files"), ("--sets", "JSON of patient lists"),
                       ("--out", "the predicted label maps, one frame file per patient (replaced)"),
                       ("--dice", "Dice of every frame against the expert labels (CSV)")):
        parser.add_argument(name, type=Path, required=True, help=what)
    parser.add_argument("--subsets", nargs="+", required=True, help="which lists of the sets file to predict")
    parser.add_argument("--metrics", type=Path, help="headline: mean LV Dice per subset and phase")
    parser.add_argument("--full", type=Path, help="mean Dice per subset, label and phase")
    parser.add_argument("--novelty", type=Path, help="each patient's review signals (CSV): novelty features, for the "
                        "unlike-training threshold, and the members' EF spread")
    args = parser.parse_args()
    settings = params.load()
    device = runtime.resolve_device(settings.train.runtime.device)
    models, size = load_ensemble(args.model, device)
    print(f"infer: {len(models)} network(s) on {device} in {runtime.precision_name(settings.infer.precision, device)}")
    sets = read_json(args.sets)
    remove_stage_output(args.out, (FRAME_FILES,), files=(args.dice, args.novelty, args.metrics, args.full))
    rows, features, failed = [], [], []
    for subset in args.subsets:
        for patient in tqdm(sets[subset], desc=f"infer {subset}", mininterval=5):
            try:
                frame_rows, found = segmentation.predict_patient(models, patient, size, settings.infer,
                                                                 patient_path(patient, args.out), args.ingested,
                                                                 settings.ef.method)
            except StudyError as error:  # the ef stage reports it as no_prediction; the others go on
                failed.append(f"{patient} ({error})")
                continue
            rows += [{**row, "set": subset} for row in frame_rows]
            features.append({**found, "set": subset})
    if failed:
        print(f"infer: {len(failed)} patient(s) not segmented: " + "; ".join(failed))
    table = pd.DataFrame(rows)
    write_csv(args.dice, table)
    summary = {subset: segmentation.dice_summary(group) for subset, group in table.groupby("set", sort=False)}
    if args.novelty:
        write_csv(args.novelty, pd.DataFrame(features))
    if args.metrics:
        write_json(args.metrics, report.dice_headline(summary))
    if args.full:
        write_json(args.full, summary)
    print("infer: " + ", ".join(f"{s} LV Dice ED {m['dice_lv_ed']:.3f} ES {m['dice_lv_es']:.3f}" for s, m in summary.items()))


if __name__ == "__main__":
    run(main)

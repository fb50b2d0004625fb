"""Predict label maps on the native grids, with Dice against the expert labels.

Plain mode: the val and test patients with models/segmenter.pt -> data/predictions/.
``--fold K``: fold K's held-out patients with its model -> data/cv/fold_K/predictions/.
"""

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from echoef import model as M, params as P, segmentation as S, split  # noqa: E402
from echoef.io import read_json, write_csv, write_json  # noqa: E402
from echoef.stage import run  # noqa: E402
from echoef.status import StudyError  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fold", type=int)
    args = parser.parse_args()
    params = P.load()
    device = M.resolve_device(params["train"]["device"])
    if args.fold is None:
        model_path, out = "models/segmenter.pt", Path("data/predictions")
        sets = {k: v for k, v in read_json("data/split.json").items() if k in ("val", "test")}
    else:
        model_path, out = f"data/cv/fold_{args.fold}/model/segmenter.pt", Path(f"data/cv/fold_{args.fold}/predictions")
        sets = {"oof": split.fold_sets(read_json("data/cv/folds.json"), args.fold)["held_out"]}
    models, state = M.load_checkpoint(model_path, device)
    print(f"infer: {len(models)} network(s) on {device} in {M.precision_name(params['infer']['precision'], device)}")
    shutil.rmtree(out, ignore_errors=True)
    rows, failed = [], []
    for subset, patients in sets.items():
        for patient in tqdm(patients, desc=f"infer {subset}", mininterval=5):
            try:
                frame_rows = S.predict_patient(models, patient, state["model_config"]["input_size"], params["infer"], out / f"{patient}.npz")
            except StudyError as error:  # the ef stage reports it as no_prediction; the others go on
                failed.append(f"{patient} ({error})")
                continue
            rows += [{**row, "set": subset} for row in frame_rows]
    if failed:
        print(f"infer: {len(failed)} patient(s) not segmented: " + "; ".join(failed))
    table = pd.DataFrame(rows)
    write_csv(out / "dice.csv" if args.fold is not None else "data/segmentation_dice.csv", table)
    if args.fold is None:
        metrics = {subset: S.dice_summary(group) for subset, group in table.groupby("set", sort=False)}
        write_json("metrics/segmentation.json", metrics)
        print("infer: " + ", ".join(f"{s} LV Dice ED {m['dice_lv_ed']:.3f} ES {m['dice_lv_es']:.3f}" for s, m in metrics.items()))
    else:
        print(f"infer: fold {args.fold}, {len(sets['oof'])} held-out patients, LV Dice {table['dice_lv'].mean():.3f}")


if __name__ == "__main__":
    run(main)

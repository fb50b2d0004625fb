"""Predict label maps for the val and test patients on their native grids; segmentation metrics."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from echoef import dataset, model as M, params as P, segmentation as S  # noqa: E402
from echoef.io import read_json, write_csv, write_json, write_npz  # noqa: E402
from echoef.stage import run  # noqa: E402

OUT = Path("data/predictions")
NAMES = {S.LV: "lv", S.MYO: "myo", S.LA: "la"}


def main():
    params = P.load()
    config = params["infer"]
    device = M.resolve_device(params["train"]["device"])
    net, state = M.load_checkpoint("models/segmenter.pt", device)
    size = state["model_config"]["input_size"]
    split = read_json("data/split.json")
    shutil.rmtree(OUT, ignore_errors=True)
    rows = []
    for subset in ("val", "test"):
        for patient in tqdm(split[subset], desc=f"infer {subset}", mininterval=5):
            frames = dataset.load_frames(f"data/ingested/{patient}.npz")
            labels = S.predict_frames(net, list(frames.values()), size, config["batch_size"], config["tta"])
            arrays = {}
            for (view, phase), frame, label in zip(frames, frames.values(), labels):
                arrays[f"{view}_{phase}_label"] = label
                arrays[f"{view}_{phase}_spacing_mm"] = np.array(frame.spacing_mm)
                rows.append({"patient": patient, "set": subset, "view": view, "phase": phase,
                             **{f"dice_{n}": S.dice(label, frame.label, c) for c, n in NAMES.items()}})
            write_npz(OUT / f"{patient}.npz", **arrays)
    table = pd.DataFrame(rows)
    write_csv("data/segmentation_dice.csv", table)
    metrics = {}
    for subset, group in table.groupby("set", sort=False):
        metrics[subset] = {f"{name}_{phase.lower()}": float(g[name].mean())
                           for phase, g in group.groupby("phase") for name in [f"dice_{n}" for n in NAMES.values()]}
        metrics[subset]["n_patients"] = int(group["patient"].nunique())
    write_json("metrics/segmentation.json", metrics)
    print("infer: " + ", ".join(f"{s} LV Dice ED {m['dice_lv_ed']:.3f} ES {m['dice_lv_es']:.3f}" for s, m in metrics.items()))


if __name__ == "__main__":
    run(main)

"""How much EF a network grid can cost at best: the expert masks sent through the grid and back, then
measured, against the expert masks measured as they are.

A perfect network on an S x S grid can at best give back what the grid keeps of the expert masks.
Two round trips through the package's own mapping (`model.geometry`), both ending as prediction does
(bilinear `to_native` of per-class scores, argmax, `segmentation.postprocess`):
- "target": the label map put on the grid by nearest neighbour, as the training targets are;
- "soft": each class's area fraction on the grid (antialiased bilinear resampling of the one-hot
  map), what a network trained toward the exact areas could at best paint.
Then Simpson's biplane EF of each (`measure.ef.patient_ef`) against the EF of the native expert masks.
If the grid's own EF error is small against a model's (MAE about 4.5 points), a finer grid cannot
remove much of it.

Usage: python benchmarks/grid_limit.py --ingested WORKSPACE/data/ingested [--sizes 128 192 256]
       [--patients N] [--out DIR]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from echoef import machine
from echoef.domain import Label
from echoef.errors import UsageError
from echoef.io.atomic import write_csv, write_json, write_text
from echoef.io.framefile import load as load_frames
from echoef.measure import ef
from echoef.model import geometry, segmentation
from echoef.reporting import records

CLASSES = len(Label)


def round_trip(label: np.ndarray, spacing_mm: tuple[float, float], size: int, soft: bool) -> np.ndarray:
    """The label map on its native grid after the S x S grid and back, as prediction maps scores."""
    box = geometry.letterbox(label.shape, spacing_mm, size)
    if soft:
        scores = torch.stack([geometry.to_grid((label == c).astype(np.float32), box) for c in range(CLASSES)])
    else:
        grid = geometry.labels_to_grid(label, box)
        scores = torch.nn.functional.one_hot(grid, CLASSES).permute(2, 0, 1).float()
    return segmentation.postprocess(geometry.to_native(scores, box).argmax(0).numpy().astype(np.uint8))


def patient_rows(path: Path, sizes: list[int]) -> list[dict]:
    """One row per (grid size, round trip) of one patient: EDV, ESV and EF, with the native masks' as size 0."""
    frames = {key: (frame.label, frame.spacing_mm) for key, frame in load_frames(path).items() if frame.label is not None}
    rows = [{"patient": path.stem, "size": 0, "trip": "native", **ef.patient_ef(frames, "simpson_biplane")}]
    for size in sizes:
        for trip in ("target", "soft"):
            moved = {key: (round_trip(label, spacing, size, trip == "soft"), spacing) for key, (label, spacing) in frames.items()}
            rows.append({"patient": path.stem, "size": size, "trip": trip, **ef.patient_ef(moved, "simpson_biplane")})
    return rows


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per grid size and round trip: EF MAE and bias against the native masks' EF, and the SD of the
    relative EDV and ESV errors."""
    native = table[table["trip"] == "native"].set_index("patient")
    out = []
    for (size, trip), group in table[table["trip"] != "native"].groupby(["size", "trip"]):
        group = group.set_index("patient")
        error = group["ef"] - native.loc[group.index, "ef"]
        out.append({"size": size, "trip": trip, "n": int(error.notna().sum()), "ef_mae": error.abs().mean(),
                    "ef_bias": error.mean(), "ef_within_1": (error.abs() <= 1).mean(),
                    "edv_rel_sd": (group["edv_ml"] / native.loc[group.index, "edv_ml"] - 1).std(),
                    "esv_rel_sd": (group["esv_ml"] / native.loc[group.index, "esv_ml"] - 1).std()})
    return pd.DataFrame(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingested", type=Path, required=True, help="a workspace's data/ingested (expert label maps)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 192, 256])
    parser.add_argument("--patients", type=int, default=0, help="the first N patients only (0: all)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--replace", action="store_true", help="write into --out although it holds a record already")
    args = parser.parse_args()
    try:  # before the work, so that a refusal costs nothing
        out = records.claim_evidence_folder(args.out, args.replace) if args.out else None
    except UsageError as error:
        sys.exit(f"error: {error}")
    torch.set_num_threads(1)
    paths = sorted(args.ingested.glob("patient*.npz"))[: args.patients or None]
    if not paths:
        sys.exit(f"{args.ingested}: no ingested patients (patient*.npz); run the ingest stage first")
    table = pd.DataFrame([row for path in paths for row in patient_rows(path, args.sizes)])
    result = summary(table)
    command = "python benchmarks/grid_limit.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = ["# EF lost to the network grid, at best", "", f"`{command}`", "",
             f"Machine: {machine.describe()}; commit {machine.commit()}; {len(paths)} patients.", "",
             "| grid | round trip | n | EF MAE | bias | within 1 point | EDV rel. SD | ESV rel. SD |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.size} | {r.trip} | {r.n} | {r.ef_mae:.2f} | {r.ef_bias:+.2f} | {r.ef_within_1:.0%} | {r.edv_rel_sd:.3f} | "
              f"{r.esv_rel_sd:.3f} |" for r in result.itertuples()]
    if out:
        write_csv(out / "patients.csv", table[["patient", "size", "trip", "edv_ml", "esv_ml", "ef", "status"]])
        write_json(out / "grid_limit.json", {"command": command, "machine": machine.describe(), "commit": machine.commit(),
                                             "n_patients": len(paths), "summary": result.to_dict("records")})
        write_text(out / "report.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Train the U-Net ensemble; keep each member's checkpoint of best validation LV Dice.

train.py --ingested DIR --sets FILE (its "train" and "val" lists) --model FILE --train-log FILE --curves DIR
[--seed S]: the main model (data/split.json) and each cross-validation fold's (its sets file, its own
seed) are this one script with other paths.
"""

import argparse
import contextlib
import dataclasses
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from dvclive import Live

from echoef import dataset, framefile, machine, params as P, runtime, training
from echoef.errors import StudyError
from echoef.framefile import patient_path
from echoef.io import read_json, write_json
from echoef.network import save_checkpoint
from echoef.stage import run


def load_set(patients: list[str], ingested: Path, config: P.Train):
    """Grid tensors of the patients' frames in the input order every member can read."""
    frames, skipped = [], []
    for patient in patients:
        study = framefile.load(patient_path(patient, ingested))
        try:
            frames += [study[key] for key in dataset.input_order(study, max(config.network.member_phases()))]
        except StudyError as error:  # a paired member cannot read this patient; the others still train
            skipped.append(f"{patient} ({error})")
    if skipped:
        print(f"train: {len(skipped)} patient(s) left out: " + "; ".join(skipped))
    images, labels, _ = dataset.grid_tensors(frames, config.network.input_size)
    return images, labels


def start_processes(device: str) -> tuple[str, bool, int]:
    """Under torchrun with several processes: one process group, one GPU per process (or gloo on
    CPU). Returns (this process's device, whether it writes the outputs, the number of processes)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, True, 1
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return device, dist.get_rank() == 0, dist.get_world_size()


def curve_logger(live, members: int):
    def log(member, epoch, row):
        live.step = epoch  # each member's curve starts at step 0
        for key, value in row.items():
            live.log_metric(key if members == 1 else f"member_{member}/{key}", value)
        live.make_summary()
        print(f"member {member} epoch {epoch + 1}: " + " ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    return log


def main():
    parser = argparse.ArgumentParser()
    for name in ("--ingested", "--sets", "--model", "--train-log", "--curves"):
        parser.add_argument(name, type=Path, required=True)
    parser.add_argument("--seed", type=int, help="train.seed for this model (each fold has its own)")
    args = parser.parse_args()
    config = P.load().train
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    device, writer, world = start_processes(runtime.resolve_device(config.runtime.device))
    sets = read_json(args.sets)
    train_set, val_set = load_set(sets["train"], args.ingested, config), load_set(sets["val"], args.ingested, config)
    members = config.network.members
    if writer:
        print(f"train: {len(train_set[0])} training and {len(val_set[0])} validation frames on {device} in "
              f"{runtime.precision_name(config.runtime.precision, device)}" + (f", {world} processes" if world > 1 else "")
              + f", {members} ensemble member(s), {min(config.runtime.parallel_members, members)} at a time")
    live = Live(str(args.curves), dvcyaml=None, save_dvc_exp=False, report=None) if writer else contextlib.nullcontext()
    with live:
        start = time.perf_counter()
        results = training.train_members(train_set, val_set, config, device, curve_logger(live, members) if writer else None)
        seconds = time.perf_counter() - start
    if world > 1:
        dist.destroy_process_group()
    if not writer:
        return
    summary = [{"seed": m["seed"], "phases_per_input": m["phases_per_input"], "best_epoch": m["best_epoch"],
                "val_dice_lv": m["history"][m["best_epoch"]]["val_dice_lv"]} for m in results]
    save_checkpoint(args.model, [m["state_dict"] for m in results], config.network,
                    {"members": summary, "train_patients": sets["train"], "val_patients": sets["val"]})
    # Who the model saw, beside it: the cross-validation checks read this.
    write_json(args.train_log, {"seed": config.seed, "processes": world, "device": device, "train_seconds": seconds,
                                "precision": runtime.precision_name(config.runtime.precision, device),
                                "environment": machine.environment(device),
                          "train_patients": sets["train"], "val_patients": sets["val"],
                          "members": [{**s, "history": m["history"]} for s, m in zip(summary, results)]})
    print(f"train: {seconds:.0f} s; " + "; ".join(f"seed {s['seed']} ({s['phases_per_input']} frame(s) per input) best epoch "
                                                   f"{s['best_epoch'] + 1}, validation LV Dice {s['val_dice_lv']:.4f}" for s in summary))


if __name__ == "__main__":
    run(main)

"""Train the segmentation ensemble; keep each member's checkpoint of best validation LV Dice.

train.py --ingested DIR --sets FILE (its "train" and "val" lists) --model FILE --train-log FILE --curves DIR
[--seed S] [--resume DIR]: the main model (data/split.json) and each cross-validation fold's (its sets file, its own
seed) are this one script with other paths.
"""

import argparse
import contextlib
import dataclasses
import time
from pathlib import Path

import torch
from dvclive import Live

from echoef import machine, params
from echoef.io.atomic import read_json, write_json
from echoef.model import dataset, resume, runtime, training
from echoef.model.network import save_checkpoint
from echoef.stage import run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ingested", type=Path, required=True, help="ingest's frame files")
    parser.add_argument("--sets", type=Path, required=True, help='JSON with the "train" and "val" patient lists')
    parser.add_argument("--model", type=Path, required=True, help="the model file written (weights and what built them)")
    parser.add_argument("--train-log", type=Path, required=True, help="who the model saw, how long, on what machine (JSON)")
    parser.add_argument("--curves", type=Path, required=True, help="dvclive's folder of training curves")
    parser.add_argument("--seed", type=int, help="train.seed for this model (each fold has its own)")
    parser.add_argument("--resume", type=Path, help="folder where the training state is saved between epochs, so that "
                        "an interrupted run goes on from it (removed once the model is written)")
    args = parser.parse_args()
    config = params.load().train
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    device, writer, world = runtime.start_processes(runtime.resolve_device(config.runtime.device))
    sets = read_json(args.sets)
    train_set, val_set = (dataset.training_tensors(sets[name], args.ingested, config.network, config.optimisation.pairs_phases)
                          for name in ("train", "val"))
    members = config.network.members
    if writer:
        print(f"train: {len(train_set[0])} training and {len(val_set[0])} validation frames on {device} in "
              f"{runtime.precision_name(config.runtime.precision, device)}" + (f", {world} processes" if world > 1 else "")
              + f", {members} ensemble member(s), {min(config.runtime.parallel_members, members)} at a time")
    live = Live(str(args.curves), dvcyaml=None, save_dvc_exp=False, report=None) if writer else contextlib.nullcontext()
    with live:
        start = time.perf_counter()
        # A state saved by one process is not one of several processes' shares: resume runs alone.
        resume_folder = args.resume if world == 1 else None
        results = training.train_members(train_set, val_set, config, device, training.curve_logger(live, members) if writer else None,
                                         resume_folder)
        # A resumed training's time counts what the interrupted runs spent on it too.
        seconds = time.perf_counter() - start + sum(m["seconds_before"] for m in results)
    runtime.end_processes(world)
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
                          "members": [{**s, "resumed_after_epoch": m["resumed_after_epoch"], "history": m["history"]}
                                      for s, m in zip(summary, results)]})
    if resume_folder is not None:
        resume.clear(resume_folder)
    print(f"train: {seconds:.0f} s; " + "; ".join(f"seed {s['seed']} ({s['phases_per_input']} frame(s) per input) best epoch "
                                                   f"{s['best_epoch'] + 1}, validation LV Dice {s['val_dice_lv']:.4f}" for s in summary))


if __name__ == "__main__":
    run(main)

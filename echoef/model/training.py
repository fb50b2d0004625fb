"""Training: the loss, one network's training loop as a short sequence of named steps (after
nnU-Net's trainer), and an ensemble's members, one after another or in parallel processes."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.distributed as dist
from torch.nn import functional
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ..io.camus import HEART_LABELS, Label
from ..params import Train
from .augment import augment
from .network import PhaseStack, build_network, softmax_batches
from .overlap import dice
from .resume import Resume, prepare_folder, resume_key
from .runtime import autocast, seed_everything


class DiceCELoss(torch.nn.Module):
    """Weighted sum of soft Dice (smp, over the three heart labels) and cross-entropy."""

    def __init__(self, dice_weight: float, ce_weight: float):
        super().__init__()
        self.dice = smp.losses.DiceLoss(mode="multiclass", classes=list(HEART_LABELS), from_logits=True)
        self.dice_weight, self.ce_weight = dice_weight, ce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice_weight * self.dice(logits, target) + self.ce_weight * functional.cross_entropy(logits, target)


def ef_ratio_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of the ES/ED volume ratio (1 - EF) of each view in a batch whose frames
    come as (ED, ES) pairs: the area-length volume goes as area^1.5 over a length that changes little
    between the phases, so the ratio is (A_ES / A_ED)^1.5 of the soft LV areas against the expert
    masks'. Pairs whose expert ED has no LV are left out."""
    p_lv = functional.softmax(logits.float(), 1)[:, Label.LV].sum((1, 2)).view(-1, 2)
    truth = (target == Label.LV).sum((1, 2)).view(-1, 2).float()
    keep = truth[:, 0] > 0
    if not keep.any():
        return logits.sum() * 0
    predicted = (p_lv[keep, 1] / p_lv[keep, 0].clamp(min=1.0)) ** 1.5
    expected = (truth[keep, 1] / truth[keep, 0]) ** 1.5
    return (predicted - expected).abs().mean()


def batch_loss(loss_fn: DiceCELoss, logits: torch.Tensor, target: torch.Tensor, optimisation) -> torch.Tensor:
    """The training loss of one batch: Dice + cross-entropy over all its frames; with ``ef_weight`` > 0
    plus that times ``ef_ratio_loss``; with ``es_weight`` > 0 plus that times Dice + cross-entropy
    of the ES frames alone (the odd positions of a batch of (ED, ES) pairs), because the EF error
    follows the end-systolic volume's and a batch Dice is dominated by the larger ED cavities."""
    loss = loss_fn(logits, target)
    if optimisation.ef_weight > 0:
        loss = loss + optimisation.ef_weight * ef_ratio_loss(logits, target)
    if optimisation.es_weight > 0:
        loss = loss + optimisation.es_weight * loss_fn(logits[1::2], target[1::2])
    return loss


def validation_dice(model: PhaseStack, val_set, batch_size: int, precision: str) -> np.ndarray:
    """Mean Dice of LV cavity, myocardium and atrium over the validation frames (on their device)."""
    images, labels = val_set
    pred = torch.cat([probs.argmax(1) for probs in softmax_batches(model, images, batch_size, False, precision)])
    return np.nanmean(dice(pred, labels.to(pred.device)).cpu().numpy(), axis=0)


def _global_batches(n: int, batch_size: int, world: int) -> list[int]:
    """Start index of each global batch; with several processes, only batches every process can share."""
    return [start for start in range(0, n, batch_size) if min(batch_size, n - start) >= world]


class Trainer:
    """One network's training: AdamW with a one-cycle schedule, the weights of the best validation
    LV Dice kept. ``run`` is a loop of ``train_epoch`` (a ``train_step`` per batch), ``validate``
    and ``end_epoch``.

    ``train_set``/``val_set`` are (images (N,1,S,S) float, labels (N,S,S) long), frames in the
    network's input order (``model.phases_per_input`` consecutive frames per input; the batch size
    counts frames); ``log(epoch, row)`` receives each epoch's metrics. With ``ema_decay`` > 0 the
    validated and kept weights are an exponential moving average of the trained ones. Inside a
    torch.distributed process group (torchrun) the model is wrapped in DistributedDataParallel and
    each process trains on its share of every global batch. With ``resume`` (one process only) the
    whole training state is saved between epochs and a run that finds one goes on from it.
    """

    def __init__(self, model: PhaseStack, train_set, val_set, config: Train, device: str, log=None,
                 resume: Resume | None = None):
        self.config, self.device, self.log, self.resume = config, device, log, resume
        distributed = dist.is_available() and dist.is_initialized()
        self.world, self.rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        cuda = torch.device(device).type == "cuda"
        # Every process draws the same batch order; augmentation draws differ per process.
        self.order_generator = torch.Generator().manual_seed(config.seed)
        self.augment_generator = torch.Generator(device=device).manual_seed(config.seed * 1000 + 1 + self.rank)
        self.images, self.labels = (t.to(device) for t in train_set)
        self.val_set = tuple(t.to(device) for t in val_set)
        self.model = model.to(device, memory_format=torch.channels_last)  # faster on CPU too (oneDNN), float32 or bf16
        # smp keeps the encoder stages that a shallower encoder_depth leaves unused: DDP must allow them.
        self.net = (DistributedDataParallel(model, device_ids=[torch.device(device).index] if cuda else None,
                                            find_unused_parameters=True) if distributed else model)
        optimisation = config.optimisation
        self.ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(optimisation.ema_decay), use_buffers=True)
                    if optimisation.ema_decay > 0 else None)
        self.evaluated = self.ema.module if self.ema else model
        self.loss_fn = DiceCELoss(optimisation.dice_weight, optimisation.ce_weight)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=optimisation.lr, weight_decay=optimisation.weight_decay,
                                           fused=cuda or None)
        # Batches are drawn in whole inputs (a view's frames stay together); with the EF or ES term, in a
        # view's ED and ES frames together whatever the network reads per input.
        self.phases = model.phases_per_input
        self.group = 2 if optimisation.pairs_phases else self.phases
        self.n_inputs, self.inputs_per_batch = len(self.images) // self.group, optimisation.batch_size // self.group
        self.within_input = torch.arange(self.group, device=device)
        self.batches = _global_batches(self.n_inputs, self.inputs_per_batch, self.world)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=optimisation.lr,
                                                             total_steps=optimisation.epochs * len(self.batches))
        self.precision = config.runtime.precision
        self.best = {"lv_dice": -1.0, "state": None, "epoch": -1}
        self.history = []
        self.resumed_after, self.seconds_before, self.started = 0, 0.0, time.perf_counter()

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        """One optimiser step on the frames ``idx``; returns the batch's summed loss (detached)."""
        x, y = augment(self.images[idx], self.labels[idx], self.config.augment, self.augment_generator, self.phases)
        with autocast(self.precision, self.device):
            logits = self.net(x.contiguous(memory_format=torch.channels_last)).float()
            loss = batch_loss(self.loss_fn, logits, y, self.config.optimisation)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema:
            self.ema.update_parameters(self.model)
        return loss.detach().double() * len(idx)

    def train_epoch(self, epoch: int) -> float:
        """One pass over the training inputs in a fresh order; the mean loss per frame."""
        self.net.train()
        order = torch.randperm(self.n_inputs, generator=self.order_generator).to(self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for start in tqdm(self.batches, desc=f"epoch {epoch + 1}/{self.config.optimisation.epochs}", leave=False,
                          mininterval=5, disable=self.rank > 0):
            inputs = order[start : start + self.inputs_per_batch][self.rank :: self.world, None]
            total += self.train_step((inputs * self.group + self.within_input).flatten())
        if self.world > 1:
            dist.all_reduce(total)
        frames = sum(self.group * min(self.inputs_per_batch, self.n_inputs - b) for b in self.batches)
        return float(total) / frames

    def validate(self) -> np.ndarray:
        """Mean validation Dice (LV, myocardium, atrium) of the evaluated weights; every process
        validates the same weights on the whole set, so all get the same numbers."""
        self.evaluated.eval()
        return validation_dice(self.evaluated, self.val_set, self.config.optimisation.batch_size, self.precision)

    def end_epoch(self, epoch: int, loss: float, dice_scores: np.ndarray) -> None:
        """Record and log the epoch; keep the weights if their validation LV Dice is the best yet."""
        row = {"train_loss": loss, "val_dice_lv": float(dice_scores[0]), "val_dice_myo": float(dice_scores[1]),
               "val_dice_la": float(dice_scores[2])}
        self.history.append(row)
        if self.log:
            self.log(epoch, row)
        if row["val_dice_lv"] > self.best["lv_dice"]:
            self.best = {"lv_dice": row["val_dice_lv"], "epoch": epoch,
                         "state": {k: v.detach().cpu().clone() for k, v in self.evaluated.state_dict().items()}}

    def snapshot(self, epochs_done: int) -> dict:
        """Everything the next epoch depends on: weights and their average, optimiser and schedule,
        both random streams (and torch's own), the best weights so far and the history."""
        return {"epochs_done": epochs_done, "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "best": self.best, "history": self.history,
                "order_rng": self.order_generator.get_state(), "augment_rng": self.augment_generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "seconds": self.seconds_before + time.perf_counter() - self.started}

    def restore(self, state: dict) -> int:
        """Put back a ``snapshot``; returns the number of epochs it had done."""
        self.model.load_state_dict(state["model"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best, self.history = state["best"], state["history"]
        self.order_generator.set_state(state["order_rng"])
        self.augment_generator.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.seconds_before = float(state["seconds"])
        return int(state["epochs_done"])

    def run(self) -> tuple[dict, int, list[dict]]:
        """Train every epoch (from the saved state's next one, if ``resume`` finds one); returns (best
        state_dict, best epoch, history)."""
        epochs = self.config.optimisation.epochs
        self.started = time.perf_counter()
        saved = self.resume.load() if self.resume else None
        first = self.resumed_after = self.restore(saved) if saved is not None else 0
        if saved is not None and self.rank == 0:
            print(f"resuming training from a saved state after epoch {first} of {epochs} ({self.resume.path.name})", flush=True)
        if saved is not None and self.log:
            for epoch, row in enumerate(self.history):  # the curves get every epoch, as without the interruption
                self.log(epoch, row)
        for epoch in range(first, epochs):
            loss = self.train_epoch(epoch)
            self.end_epoch(epoch, loss, self.validate())
            if self.resume and self.resume.due(last_epoch=epoch + 1 == epochs):
                self.resume.save(self.snapshot(epoch + 1))
        return self.best["state"], self.best["epoch"], self.history


def train_member(train_set, val_set, config: Train, phases_per_input: int, device: str, log=None,
                 resume: Resume | None = None) -> dict:
    """Seed, build and train one network of ``config`` (its own ``seed``) reading ``phases_per_input``
    frames per input, its state kept by ``resume`` if given. Returns {seed, phases_per_input,
    state_dict, best_epoch, history, resumed_after_epoch (0 for a training from the start),
    seconds_before (spent on it by the runs before)}."""
    seed_everything(config.seed, device)
    trainer = Trainer(build_network(config.network, phases_per_input), train_set, val_set, config, device, log, resume)
    state, best_epoch, history = trainer.run()
    return {"seed": config.seed, "phases_per_input": phases_per_input, "state_dict": state,
            "best_epoch": best_epoch, "history": history, "resumed_after_epoch": trainer.resumed_after,
            "seconds_before": trainer.seconds_before}


def _train_member_in_process(sets_path: str, config: Train, phases: int, device: str, out_path: str,
                             resume: Resume | None) -> str:
    """``train_member`` in a worker process: data from one file, the result to another (not through
    shared memory, which containers often cap at 64 MB)."""
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    sets = torch.load(sets_path, mmap=True, weights_only=True)
    torch.save(train_member(sets["train"], sets["val"], config, phases, device, resume=resume), out_path)
    return out_path


def train_members(train_set, val_set, config: Train, device: str, log=None, resume_folder: Path | None = None) -> list[dict]:
    """Train ``network.members`` networks (seeds ``seed``, ``seed + 1``, ...; frames per input from
    ``network.member_phases``) that predict as an ensemble.

    The frames of ``train_set``/``val_set`` are in ``dataset.input_order``, which serves every member.
    With ``runtime.parallel_members`` > 1 that many members train at once, each in its own process: a
    GPU that one network leaves partly idle does more work per second. Each member is seeded alone, so
    the networks are the ones trained one after another. Returns one ``train_member`` result per
    member; ``log(member, epoch, row)``, after training when members run in parallel.

    With ``resume_folder`` each member's state is saved there between epochs (``resume``): a run
    interrupted and started again goes on where it stopped, members already trained are not trained
    again, and the networks are the ones an uninterrupted run gives. The caller removes the saved
    states (``resume.clear``) once it has written the model.
    """
    phases = config.network.member_phases()
    configs = [dataclasses.replace(config, seed=config.seed + member) for member in range(len(phases))]
    workers = min(config.runtime.parallel_members, len(configs))
    resumes = [None] * len(configs)
    if resume_folder is not None:
        keys = [resume_key(c, p, train_set, val_set, device) for c, p in zip(configs, phases)]
        folder = prepare_folder(resume_folder, keys)
        resumes = [Resume(folder, key) for key in keys]
    if workers <= 1:
        return [train_member(train_set, val_set, c, p, device, (lambda epoch, row, m=member: log(m, epoch, row)) if log else None,
                             resume)
                for member, (c, p, resume) in enumerate(zip(configs, phases, resumes))]
    with tempfile.TemporaryDirectory() as tmp:
        sets_path = str(Path(tmp) / "sets.pt")
        torch.save({"train": tuple(train_set), "val": tuple(val_set)}, sets_path)
        # spawn, not fork: a forked child cannot use CUDA once the parent has touched it.
        with ProcessPoolExecutor(workers, mp_context=torch.multiprocessing.get_context("spawn")) as pool:
            paths = list(pool.map(_train_member_in_process, repeat(sets_path), configs, phases, repeat(device),
                                  [str(Path(tmp) / f"member_{m}.pt") for m in range(len(configs))], resumes))
        members = [torch.load(path, weights_only=True) for path in paths]
    if log:
        for member, result in enumerate(members):
            for epoch, row in enumerate(result["history"]):
                log(member, epoch, row)
    return members


def curve_logger(live, members: int):
    """A ``log(member, epoch, row)`` for ``train_members`` that records each member's curves with a
    dvclive ``live`` (under ``member_<m>/`` when there are several) and prints one line per epoch."""
    def log(member, epoch, row):
        live.step = epoch  # each member's curve starts at step 0
        for key, value in row.items():
            live.log_metric(key if members == 1 else f"member_{member}/{key}", value)
        live.make_summary()
        print(f"member {member} epoch {epoch + 1}: " + " ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
    return log


"""The segmentation network (an smp U-Net built from params), its loss, training and inference."""

from __future__ import annotations

import math
import pickle
import random
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from .io import atomic_path
from .params import member_phases

N_CLASSES = 4  # background, LV cavity, myocardium, left atrium
# Test-time augmentation by intensity: gammas inside the training augmentation's range. Mirroring is
# not used: apical views have a fixed orientation, and mirrored test images cost a mirror-naive
# model 0.013-0.018 LV Dice on CAMUS validation (docs/benchmarks.md).
TTA_GAMMAS = (math.exp(-0.2), 1.0, math.exp(0.2))


class CheckpointError(ValueError):
    """A model file that cannot be used with this code or configuration, or that is not safe to load."""


class DeviceError(ValueError):
    """A device asked for that this machine does not have."""


class PhaseStackUnet(smp.Unet):
    """An smp U-Net that segments ``phases_per_input`` consecutive frames together (2: a view's ED
    and ES frames as the channels of one input, so both masks come from one reading of the view).

    Takes frames (F, 1, H, W) and returns logits (F, 4, H, W) in the same order, F a multiple of
    ``phases_per_input``; with 1 it is the plain one-frame U-Net.
    """

    def __init__(self, phases_per_input: int, **kwargs):
        super().__init__(in_channels=phases_per_input, classes=N_CLASSES * phases_per_input, **kwargs)
        self.phases_per_input = phases_per_input

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        n, _, height, width = frames.shape
        logits = super().forward(frames.reshape(n // self.phases_per_input, self.phases_per_input, height, width))
        return logits.reshape(n, N_CLASSES, height, width)


def build_unet(config: dict) -> torch.nn.Module:
    """The U-Net of ``config`` for one-channel echo frames and the four CAMUS labels."""
    return PhaseStackUnet(
        config["phases_per_input"],
        encoder_name=config["encoder"],
        encoder_weights=config["encoder_weights"],
        encoder_depth=config["encoder_depth"],
        decoder_channels=tuple(config["decoder_channels"][: config["encoder_depth"]]),
    )


MODEL_KEYS = ("encoder", "encoder_weights", "encoder_depth", "decoder_channels", "input_size", "phases_per_input")


def save_checkpoint(path, state_dicts: list[dict], config: dict, extra: dict) -> None:
    """The weights of each ensemble member plus the configuration that built them, so inference
    rebuilds the same networks."""
    state = {"model_config": {k: config[k] for k in MODEL_KEYS}, "state_dicts": state_dicts, **extra}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, device: str = "cpu") -> tuple[list[torch.nn.Module], dict]:
    """Rebuild the ensemble members saved by ``save_checkpoint``; CheckpointError if they do not fit.

    The file is unpickled with ``weights_only``: tensors and plain containers only. A file that
    needs anything more (a class, a function call: the way a crafted model file runs code) is
    refused before any of it is executed.
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError as error:
        raise CheckpointError(f"{path}: not found") from error
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path}: refused: it holds Python objects beyond tensors and plain data, which "
                              "could run code when loaded; use a model file written by EchoEF") from error
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise CheckpointError(f"{path}: not a model file ({str(error).splitlines()[0][:200]})") from error
    try:
        config = dict(state["model_config"], encoder_weights=None, members=len(state["state_dicts"]))  # weights come from the file
        models = []
        for weights, phases in zip(state["state_dicts"], member_phases(config), strict=True):
            models.append(build_unet({**config, "phases_per_input": phases}))
            models[-1].load_state_dict(weights)
    except (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a model of this configuration ({str(error).splitlines()[0][:200]})") from error
    return [m.to(device, memory_format=torch.channels_last).eval() for m in models], state


def has_native_bf16(device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA GPU with bf16 units (Ampere or newer)
    or a CPU with AVX512-BF16 or AMX. Elsewhere bf16 is emulated and slower than float32."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    # torch offers these CPU checks only as private helpers; where one is missing, answer no (float32 is safe).
    return any(getattr(torch.cpu, check, lambda: False)() for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """bfloat16 where the network runs in mixed precision, None for float32: 'bf16' always, 'auto' on
    hardware with native bf16 (``has_native_bf16``), 'fp32' never. Warns if 'bf16' will be emulated."""
    native = has_native_bf16(device)
    if precision == "bf16" and not native:
        # Measured on CPU: about 2 times slower than float32 with AVX512 alone, 11 times with AVX2.
        warnings.warn(f"bf16 on {torch.device(device).type} without native bfloat16 is emulated and slower than "
                      "float32; set train.precision / infer.precision to auto or fp32", stacklevel=3)
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and native) else None


def precision_name(precision: str, device) -> str:
    """What ``precision`` runs as on ``device``, for logs: 'bf16' or 'float32' (resolves 'auto')."""
    return "bf16" if autocast_dtype(precision, device) else "float32"


def autocast(precision: str, device) -> torch.autocast:
    """The autocast context for ``precision`` on ``device``; a disabled one for float32."""
    dtype = autocast_dtype(precision, device)
    return torch.autocast(torch.device(device).type, dtype=dtype or torch.float32, enabled=dtype is not None)


def resolve_device(name: str) -> str:
    """'cuda' if asked for (or 'auto' and available), else 'cpu'."""
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("train.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"


def seed_everything(seed: int, device: str = "cpu") -> None:
    """Seed Python, numpy and torch. On CPU ask for deterministic kernels (runs repeat bit for bit);
    on CUDA let cuDNN pick its fastest kernels instead (seeded, not bitwise repeatable)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    cuda = torch.device(device).type == "cuda"
    torch.use_deterministic_algorithms(not cuda, warn_only=True)
    torch.backends.cudnn.benchmark = cuda


class DiceCELoss(torch.nn.Module):
    """Weighted sum of soft Dice (smp, over the three heart labels) and cross-entropy."""

    def __init__(self, dice_weight: float, ce_weight: float):
        super().__init__()
        self.dice = smp.losses.DiceLoss(mode="multiclass", classes=[1, 2, 3], from_logits=True)
        self.dice_weight, self.ce_weight = dice_weight, ce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice_weight * self.dice(logits, target) + self.ce_weight * F.cross_entropy(logits, target)


def apply_gamma(images: torch.Tensor, gamma) -> torch.Tensor:
    """Gamma on each image rescaled to [0, 1] (images are zero-mean normalised), then scaled back."""
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    span = images.amax(dim=(1, 2, 3), keepdim=True) - low + 1e-6
    return ((images - low) / span) ** gamma * span + low


def gaussian_blur(images: torch.Tensor, sigma_px: torch.Tensor, radius: int) -> torch.Tensor:
    """Blur each image of (N, C, H, W) by its own Gaussian sigma (N,) in pixels (0: unchanged), with
    a kernel truncated at ``radius`` pixels and edges replicated."""
    n, c, height, width = images.shape
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma_px.clamp(min=1e-3)[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)
    flat = images.reshape(1, n * c, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, height, width)


def augment(images: torch.Tensor, labels: torch.Tensor, config: dict, generator: torch.Generator,
            phases_per_input: int = 1):
    """Random small rotation/scaling about the sector apex, gamma, gain, blur and noise, per input
    (the ``phases_per_input`` consecutive frames of one input share their draws, as they share a probe).

    Draws come from ``generator``, which lives on the images' device (no host round trip per batch).
    """
    n = images.shape[0]

    def uniform(low, high):
        draws = torch.rand(n // phases_per_input, generator=generator, device=generator.device)
        return (low + (high - low) * draws).repeat_interleave(phases_per_input)

    angle = uniform(-1, 1) * math.radians(config["rotation_deg"])
    scale = 1 + uniform(-1, 1) * config["scale"]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # Rotate and scale about the top centre of the grid (the probe, (x, y) = (0, -1) in
    # affine_grid's coordinates): input = A (output - p) + p.
    theta = torch.stack([torch.stack([cos, -sin, -sin], 1), torch.stack([sin, cos, cos - 1], 1)], 1)
    grid = F.affine_grid(theta, images.shape, align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].long()
    gamma = torch.exp(uniform(-1, 1) * config["gamma"]).view(n, 1, 1, 1)
    gain = (1 + 0.2 * uniform(-1, 1)).view(n, 1, 1, 1)
    images = apply_gamma(images, gamma) * gain
    if config["blur_sigma_px"] > 0:  # no draw when off, so runs without blur keep their random stream
        sigma_px = uniform(0, config["blur_sigma_px"])
        images = gaussian_blur(images, sigma_px, math.ceil(3 * config["blur_sigma_px"]))
    noise = torch.randn(images.shape, generator=generator, device=generator.device)
    images = images + config["noise_std"] * uniform(0, 1).view(n, 1, 1, 1) * noise
    return images, labels


def dice_per_class(pred: torch.Tensor, target: torch.Tensor, classes=(1, 2, 3)) -> np.ndarray:
    """Dice of each class per sample, (N, len(classes)); NaN where both are empty."""
    scores = []
    for c in classes:
        p, t = pred == c, target == c
        inter = (p & t).flatten(1).sum(1).float()
        total = p.flatten(1).sum(1).float() + t.flatten(1).sum(1).float()
        scores.append(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.nan))
    return torch.stack(scores, 1).cpu().numpy()


def _batched_scores(model: torch.nn.Module, images: torch.Tensor, batch_size: int, tta: bool, precision: str):
    """Softmax probabilities batch by batch, on the model's device."""
    device = next(model.parameters()).device
    phases = model.phases_per_input
    batch_size = max(phases, batch_size - batch_size % phases)  # whole inputs only
    with torch.inference_mode(), autocast(precision, device):
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device).contiguous(memory_format=torch.channels_last)
            if tta:
                probs = sum(model(apply_gamma(batch, g)).float().softmax(1) for g in TTA_GAMMAS) / len(TTA_GAMMAS)
            else:
                probs = model(batch).float().softmax(1)
            yield probs


def predict_scores(model: torch.nn.Module, images: torch.Tensor, batch_size: int, tta: bool = False,
                   precision: str = "auto") -> torch.Tensor:
    """Softmax probabilities (N, C, H, W) on the CPU for normalised grid images (N, 1, H, W).

    With ``tta`` the prediction is the mean over the image at three gammas (``TTA_GAMMAS``);
    ``precision`` as in ``autocast_dtype``.
    """
    return torch.cat([probs.cpu() for probs in _batched_scores(model, images, batch_size, tta, precision)])


def validation_dice(model: torch.nn.Module, val_set, batch_size: int, precision: str) -> np.ndarray:
    """Mean Dice of LV cavity, myocardium and atrium over the validation frames (on their device)."""
    images, labels = val_set
    pred = torch.cat([probs.argmax(1) for probs in _batched_scores(model, images, batch_size, False, precision)])
    return np.nanmean(dice_per_class(pred, labels.to(pred.device)), axis=0)


def _global_batches(n: int, batch_size: int, world: int) -> list[int]:
    """Start index of each global batch; with several processes, only batches every process can share."""
    return [start for start in range(0, n, batch_size) if min(batch_size, n - start) >= world]


def train(model, train_set, val_set, config: dict, device: str, log=None):
    """Train with AdamW and a one-cycle schedule; keep the weights of the best validation LV Dice.

    ``train_set``/``val_set`` are (images (N,1,S,S) float, labels (N,S,S) long), frames in the
    network's input order (``phases_per_input`` consecutive frames per input; ``batch_size`` counts
    frames); ``log(epoch, dict)`` receives the epoch's metrics. With ``ema_decay`` > 0 the validated
    and returned weights are an exponential moving average of the trained ones; ``precision`` as in
    ``autocast_dtype``. Returns (best state_dict, best epoch, history).
    Inside a torch.distributed process group (torchrun) the model is wrapped in
    DistributedDataParallel and each process trains on its share of every global batch of ``batch_size``.
    """
    distributed = dist.is_available() and dist.is_initialized()
    world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
    cuda = torch.device(device).type == "cuda"
    # Every process draws the same batch order; augmentation draws differ per process.
    order_generator = torch.Generator().manual_seed(config["seed"])
    augment_generator = torch.Generator(device=device).manual_seed(config["seed"] * 1000 + 1 + rank)
    images, labels = (t.to(device) for t in train_set)
    val_set = tuple(t.to(device) for t in val_set)
    model = model.to(device, memory_format=torch.channels_last)  # faster on CPU too (oneDNN), float32 or bf16
    # smp keeps the encoder stages that a shallower encoder_depth leaves unused: DDP must allow them.
    device_ids = [torch.device(device).index] if cuda else None
    net = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True) if distributed else model
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config["ema_decay"]), use_buffers=True)
           if config["ema_decay"] > 0 else None)
    evaluated = ema.module if ema else model
    loss_fn = DiceCELoss(config["dice_weight"], config["ce_weight"])
    optimizer = torch.optim.AdamW(net.parameters(), lr=config["lr"], weight_decay=config["weight_decay"], fused=cuda or None)
    # Batches are drawn in whole inputs (a view's frames stay together).
    phases = config["phases_per_input"]
    n_inputs, inputs_per_batch = len(images) // phases, config["batch_size"] // phases
    within_input = torch.arange(phases, device=device)
    batches = _global_batches(n_inputs, inputs_per_batch, world)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config["lr"], total_steps=config["epochs"] * len(batches))
    mixed_precision = autocast(config["precision"], device)
    best = {"lv_dice": -1.0, "state": None, "epoch": -1}
    history = []
    for epoch in range(config["epochs"]):
        net.train()
        order = torch.randperm(n_inputs, generator=order_generator).to(device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for start in tqdm(batches, desc=f"epoch {epoch + 1}/{config['epochs']}", leave=False, mininterval=5, disable=rank > 0):
            idx = (order[start : start + inputs_per_batch][rank::world, None] * phases + within_input).flatten()
            x, y = augment(images[idx], labels[idx], config["augment"], augment_generator, phases)
            with mixed_precision:
                loss = loss_fn(net(x.contiguous(memory_format=torch.channels_last)).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema:
                ema.update_parameters(model)
            total += loss.detach().double() * len(idx)
        if distributed:
            dist.all_reduce(total)
        evaluated.eval()
        # Every process validates the same weights on the whole validation set: identical results.
        dice = validation_dice(evaluated, val_set, config["batch_size"], config["precision"])
        row = {"train_loss": float(total) / sum(phases * min(inputs_per_batch, n_inputs - b) for b in batches),
               "val_dice_lv": float(dice[0]), "val_dice_myo": float(dice[1]), "val_dice_la": float(dice[2])}
        history.append(row)
        if log:
            log(epoch, row)
        if row["val_dice_lv"] > best["lv_dice"]:
            best = {"lv_dice": row["val_dice_lv"], "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in evaluated.state_dict().items()}}
    return best["state"], best["epoch"], history


def train_member(train_set, val_set, config: dict, device: str, log=None) -> dict:
    """Seed, build and train one network of ``config`` (its own ``seed`` and ``phases_per_input``).
    Returns {seed, phases_per_input, state_dict, best_epoch, history}; ``log(epoch, row)``."""
    seed_everything(config["seed"], device)
    state, best_epoch, history = train(build_unet(config), train_set, val_set, config, device, log)
    return {"seed": config["seed"], "phases_per_input": config["phases_per_input"], "state_dict": state,
            "best_epoch": best_epoch, "history": history}


def _train_member_in_process(sets_path: str, config: dict, device: str, out_path: str) -> str:
    """``train_member`` in a worker process: data from one file, the result to another (not through
    shared memory, which containers often cap at 64 MB)."""
    if config["threads"]:
        torch.set_num_threads(config["threads"])
    sets = torch.load(sets_path, mmap=True, weights_only=True)
    torch.save(train_member(sets["train"], sets["val"], config, device), out_path)
    return out_path


def train_members(train_set, val_set, config: dict, device: str, log=None) -> list[dict]:
    """Train ``members`` networks (seeds ``seed``, ``seed + 1``, ...; frames per input from
    ``member_phases``) that predict as an ensemble.

    The frames of ``train_set``/``val_set`` are in ``dataset.input_order``, which serves every member.
    With ``parallel_members`` > 1 that many members train at once, each in its own process: a GPU
    that one network leaves partly idle does more work per second. Each member is seeded alone, so
    the networks are the ones trained one after another. Returns one ``train_member`` result per
    member; ``log(member, epoch, row)``, after training when members run in parallel.
    """
    configs = [{**config, "seed": config["seed"] + member, "phases_per_input": phases}
               for member, phases in enumerate(member_phases(config))]
    workers = min(config["parallel_members"], len(configs))
    if workers <= 1:
        return [train_member(train_set, val_set, c, device, (lambda epoch, row, m=member: log(m, epoch, row)) if log else None)
                for member, c in enumerate(configs)]
    with tempfile.TemporaryDirectory() as tmp:
        sets_path = str(Path(tmp) / "sets.pt")
        torch.save({"train": tuple(train_set), "val": tuple(val_set)}, sets_path)
        # spawn, not fork: a forked child cannot use CUDA once the parent has touched it.
        with ProcessPoolExecutor(workers, mp_context=torch.multiprocessing.get_context("spawn")) as pool:
            paths = list(pool.map(_train_member_in_process, repeat(sets_path), configs, repeat(device),
                                  [str(Path(tmp) / f"member_{m}.pt") for m in range(len(configs))]))
        members = [torch.load(path, weights_only=True) for path in paths]
    if log:
        for member, result in enumerate(members):
            for epoch, row in enumerate(result["history"]):
                log(member, epoch, row)
    return members

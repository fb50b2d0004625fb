"""The segmentation network: an smp U-Net built from ``train.network``, its model file, and its
softmax scores in batches (with test-time augmentation)."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from pathlib import Path

import segmentation_models_pytorch as smp
import torch

from .augment import apply_gamma
from .camus import Label
from .errors import CheckpointError, ParamsError
from .io import atomic_path
from .params import Network, build
from .runtime import autocast

N_CLASSES = len(Label)
# Test-time augmentation by intensity: gammas inside the training augmentation's range. Mirroring is
# not used: apical views have a fixed orientation, and mirrored test images cost a mirror-naive
# model 0.013-0.018 LV Dice on CAMUS validation (docs/benchmarks.md).
TTA_GAMMAS = (math.exp(-0.2), 1.0, math.exp(0.2))
# What a model file records of its networks (the fields of params.Network but the member count,
# which is the number of weight sets it holds).
MODEL_KEYS = ("encoder", "encoder_weights", "encoder_depth", "decoder_channels", "input_size", "phases_per_input")


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


def build_unet(network: Network, phases_per_input: int) -> PhaseStackUnet:
    """One ensemble member of ``network`` reading ``phases_per_input`` frames per input."""
    return PhaseStackUnet(
        phases_per_input,
        encoder_name=network.encoder,
        encoder_weights=network.encoder_weights,
        encoder_depth=network.encoder_depth,
        decoder_channels=tuple(network.decoder_channels[: network.encoder_depth]),
    )


def save_checkpoint(path, state_dicts: list[dict], network: Network, extra: dict) -> None:
    """The weights of each ensemble member plus what built them, so inference rebuilds the same
    networks; tensors and plain data only, so it loads with ``weights_only``."""
    config = dataclasses.asdict(network)
    state = {"model_config": {k: config[k] for k in MODEL_KEYS}, "state_dicts": state_dicts, **extra}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


BUNDLE_WEIGHTS, BUNDLE_MODEL = "weights.safetensors", "model.json"


def _read_state(path: Path, device: str) -> dict:
    """The saved state of a model file, or of a bundle folder (``export``): its model.json with the
    members' weights from weights.safetensors (tensors only: nothing in it can run)."""
    if Path(path).is_dir():
        from safetensors.torch import load_file

        state = json.loads((Path(path) / BUNDLE_MODEL).read_text())
        tensors = load_file(Path(path) / BUNDLE_WEIGHTS, device=str(device))
        state["state_dicts"] = [{key.split(".", 1)[1]: value for key, value in tensors.items() if key.split(".", 1)[0] == f"member{m}"}
                                for m in range(len(state["members"]))]
        return state
    return torch.load(path, map_location=device, weights_only=True)


def load_checkpoint(path, device: str = "cpu") -> tuple[list[PhaseStackUnet], dict]:
    """Rebuild the ensemble members saved by ``save_checkpoint`` (or a bundle folder of ``export``);
    CheckpointError if they do not fit.

    A model file is unpickled with ``weights_only``: tensors and plain containers only. A file that
    needs anything more (a class, a function call: the way a crafted model file runs code) is
    refused before any of it is executed.
    """
    try:
        state = _read_state(Path(path), device)
    except FileNotFoundError as error:
        raise CheckpointError(f"{path}: not found") from error
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path}: refused: it holds Python objects beyond tensors and plain data, which "
                              "could run code when loaded; use a model file written by EchoEF") from error
    except (OSError, RuntimeError, EOFError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: not a model file ({str(error).splitlines()[0][:200]})") from error
    try:
        # The weights come from the file, never from a download.
        network = build(Network, {**state["model_config"], "encoder_weights": None, "members": len(state["state_dicts"])})
        models = []
        for weights, phases in zip(state["state_dicts"], network.member_phases(), strict=True):
            models.append(build_unet(network, phases))
            models[-1].load_state_dict(weights)
    except (AttributeError, IndexError, KeyError, ParamsError, RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a model of this configuration ({str(error).splitlines()[0][:200]})") from error
    return [m.to(device, memory_format=torch.channels_last).eval() for m in models], state


def save_bundle(out: Path, state: dict) -> None:
    """A bundle folder's weights and model.json from a model file's ``state`` (weights of member m
    as ``member<m>.<name>``; the rest as JSON). Files are written whole or not at all."""
    from safetensors.torch import save_file

    tensors = {f"member{m}.{name}": tensor.contiguous() for m, weights in enumerate(state["state_dicts"])
               for name, tensor in weights.items()}
    with atomic_path(Path(out) / BUNDLE_WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(Path(out) / BUNDLE_MODEL) as tmp:
        tmp.write_text(json.dumps({k: v for k, v in state.items() if k != "state_dicts"}, indent=2) + "\n")


def softmax_batches(model: PhaseStackUnet, images: torch.Tensor, batch_size: int, tta: bool, precision: str):
    """Softmax probabilities (B, C, S, S) batch by batch, on the model's device, for normalised grid
    images (N, 1, S, S); with ``tta`` the mean over the image at three gammas (``TTA_GAMMAS``)."""
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


def predict_scores(model: PhaseStackUnet, images: torch.Tensor, batch_size: int, tta: bool = False,
                   precision: str = "auto") -> torch.Tensor:
    """Softmax probabilities (N, C, S, S) on the CPU for normalised grid images (N, 1, S, S);
    ``precision`` as in ``runtime.autocast_dtype``."""
    return torch.cat([probs.cpu() for probs in softmax_batches(model, images, batch_size, tta, precision)])

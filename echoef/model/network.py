"""The segmentation network: an smp architecture built from ``train.network``, its model file, and its
softmax scores in batches (with test-time augmentation)."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from pathlib import Path

import segmentation_models_pytorch as smp
import torch

from ..domain import NETWORK_ARCHITECTURES, TTA_SCALE_RANGE
from ..errors import CheckpointError, ParamsError
from ..io.atomic import atomic_path
from ..io.camus import Label
from ..io.untrusted import read_bounded, regular_file
from ..params import Network, build
from .runtime import autocast

N_CLASSES = len(Label)
# Test-time augmentation by intensity: gammas inside the training augmentation's range. Mirroring is
# not used: apical views have a fixed orientation, and mirrored test images cost a mirror-naive
# model 0.014-0.018 LV Dice on CAMUS validation (docs/experiment-log.md, test-time augmentation).
TTA_GAMMAS = (math.exp(-0.2), 1.0, math.exp(0.2))
# What a model file records of its networks: the fields of params.Network but the member count, which
# is the number of weight sets it holds.
MODEL_KEYS = tuple(field.name for field in dataclasses.fields(Network) if field.name != "members")


def apply_gamma(images: torch.Tensor, gamma) -> torch.Tensor:
    """Gamma on each image (N, C, H, W) rescaled to [0, 1] (images are zero-mean normalised), then
    scaled back; ``gamma`` a number or (N, 1, 1, 1)."""
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    span = images.amax(dim=(1, 2, 3), keepdim=True) - low + 1e-6
    return ((images - low) / span) ** gamma * span + low



def _unet_family(name: str):
    def build(network: Network, **common) -> torch.nn.Module:
        return getattr(smp, name)(**common, decoder_channels=tuple(network.decoder_channels[: network.encoder_depth]))
    return build


def _fpn(network: Network, **common) -> torch.nn.Module:
    # FPN's head upsamples its stride-4 map by 4, as for a depth-5 encoder; shallower encoders need less.
    # Its segmentation branch is group-normalised in groups of 32 channels: half the width, in 32s.
    width = network.decoder_channels[0]
    return smp.FPN(**common, decoder_pyramid_channels=width, decoder_segmentation_channels=max(32, width // 64 * 32),
                   upsampling=2 ** (network.encoder_depth - 3))


def _deeplab(network: Network, **common) -> torch.nn.Module:
    return smp.DeepLabV3Plus(**common, decoder_channels=network.decoder_channels[0])


# train.network.architecture -> how segmentation-models-pytorch builds it from train.network (the
# Unet family takes one decoder width per encoder stage; FPN and DeepLabV3+ take the first as theirs).
# To add one: a builder here and its name in domain.NETWORK_ARCHITECTURES (docs/extending.md).
ARCHITECTURES = {"Unet": _unet_family("Unet"), "UnetPlusPlus": _unet_family("UnetPlusPlus"), "FPN": _fpn,
                 "DeepLabV3Plus": _deeplab}
assert set(ARCHITECTURES) == set(NETWORK_ARCHITECTURES), "each architecture name needs a builder"


def _unprefixed_keys(module, state_dict, prefix, *args) -> None:
    """Model files written when the network was itself the smp model keep their keys without the
    ``network.`` prefix; they load into the wrapper unchanged."""
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "network.")]:
        state_dict[prefix + "network." + key[len(prefix):]] = state_dict.pop(key)


class PhaseStack(torch.nn.Module):
    """Any segmentation network of ``ARCHITECTURES``, made to segment ``phases_per_input`` consecutive
    frames together (2: a view's ED and ES frames as the channels of one input, so both masks come
    from one reading of the view).

    Takes frames (F, 1, H, W) and returns logits (F, 4, H, W) in the same order, F a multiple of
    ``phases_per_input``; with 1 it is the plain one-frame network.
    """

    def __init__(self, network: torch.nn.Module, phases_per_input: int):
        super().__init__()
        self.network = network
        self.phases_per_input = phases_per_input
        self.register_load_state_dict_pre_hook(_unprefixed_keys)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        n, _, height, width = frames.shape
        logits = self.network(frames.reshape(n // self.phases_per_input, self.phases_per_input, height, width))
        return logits.reshape(n, N_CLASSES, height, width)


def build_network(network: Network, phases_per_input: int) -> PhaseStack:
    """One ensemble member of ``network`` (its ``architecture`` from ``ARCHITECTURES``) reading
    ``phases_per_input`` frames per input."""
    common = {"encoder_name": network.encoder, "encoder_weights": network.encoder_weights, "encoder_depth": network.encoder_depth,
              "in_channels": phases_per_input, "classes": N_CLASSES * phases_per_input}
    return PhaseStack(ARCHITECTURES[network.architecture](network, **common), phases_per_input)


def network_to_load(network: Network, phases_per_input: int, device: str) -> PhaseStack:
    """``build_network``'s member with its tensors allocated on ``device`` but not initialised, for
    weights about to be loaded: a strict ``load_state_dict`` sets every parameter and persistent
    buffer, so the random initialisation (most of the time a build takes) would be thrown away."""
    with torch.device("meta"):
        member = build_network(network, phases_per_input)
    if any(module._non_persistent_buffers_set for module in member.modules()):  # no load would set these
        return build_network(network, phases_per_input).to(device)
    return member.to_empty(device=device)


def _state_shapes(network: Network, phases_per_input: int) -> dict[str, tuple[int, ...]]:
    """The names and shapes of a member's weights, from a build that allocates nothing."""
    with torch.device("meta"):
        return {name: tuple(tensor.shape) for name, tensor in build_network(network, phases_per_input).state_dict().items()}


def save_checkpoint(path, state_dicts: list[dict], network: Network, extra: dict) -> None:
    """The weights of each ensemble member plus what built them, so inference rebuilds the same
    networks; tensors and plain data only, so it loads with ``weights_only``."""
    config = dataclasses.asdict(network)
    state = {"model_config": {k: config[k] for k in MODEL_KEYS}, "state_dicts": state_dicts, **extra}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


BUNDLE_WEIGHTS, BUNDLE_MODEL = "weights.safetensors", "model.json"


MAX_MEMBERS = 16  # more networks in one model file is a corrupt or crafted file, not an ensemble
MAX_INPUT_SIZE = 1024  # pixels of the network grid; echo frames are resampled to at most this
MAX_CHANNELS = 4096
MAX_MODEL_JSON_BYTES = 1 << 20


def _bundle_state(folder: Path, device: str) -> dict:
    """A bundle folder's model.json with its members' weights from weights.safetensors (tensors only:
    nothing in it can run); member m's tensors are the keys ``member<m>.<name>``, m = 0, 1, ..."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    state = json.loads(read_bounded(folder / BUNDLE_MODEL, MAX_MODEL_JSON_BYTES))  # EchoEF writes a few kB
    if not isinstance(state, dict):
        raise ValueError(f"{BUNDLE_MODEL} holds a {type(state).__name__}, not the fields of a model")
    try:
        with safe_open(regular_file(folder / BUNDLE_WEIGHTS), framework="pt") as handle:  # its header: no tensor read
            declared = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except SafetensorError as error:
        raise ValueError(f"{BUNDLE_WEIGHTS}: {error}") from error
    prefixes = {key.split(".", 1)[0] for key in declared}
    count = len(prefixes)
    if not 1 <= count <= MAX_MEMBERS or prefixes != {f"member{m}" for m in range(count)}:
        raise ValueError(f"{BUNDLE_WEIGHTS}: tensors of {sorted(prefixes)[:4]}..., not member0 ... member<n-1> with "
                         f"n from 1 to {MAX_MEMBERS}")
    members = [{key.split(".", 1)[1]: shape for key, shape in declared.items() if key.split(".", 1)[0] == f"member{m}"}
               for m in range(count)]
    if problem := weights_problem(members, check_config(state, count)):
        raise ValueError(f"{BUNDLE_WEIGHTS}: {problem}")
    try:
        tensors = load_file(folder / BUNDLE_WEIGHTS, device=str(device))
    except SafetensorError as error:
        raise ValueError(f"{BUNDLE_WEIGHTS}: {error}") from error
    state["state_dicts"] = [{key.split(".", 1)[1]: value for key, value in tensors.items() if key.split(".", 1)[0] == f"member{m}"}
                            for m in range(count)]
    return state


def _read_state(path: Path, device: str) -> dict:
    """The saved state of a model file, or of a bundle folder (``export``)."""
    if Path(path).is_dir():
        return _bundle_state(Path(path), device)
    # Mapped, not read: check_state compares names and shapes before any value is touched.
    return torch.load(regular_file(path), map_location=device, weights_only=True, mmap=True)


def check_state(state) -> Network:
    """The ``Network`` a model file's state describes, every value checked before anything is built:
    ValueError (naming the field) for a wrong type, an impossible size, an unknown encoder, a
    member count that does not match its weights, weights that are not the described network's
    (names and shapes, compared before any value is read), or a weight that is not a finite number."""
    if not isinstance(state, dict):
        raise ValueError("model_config: missing, or not a table of fields")
    weights = state.get("state_dicts")
    if not isinstance(weights, list) or not 1 <= len(weights) <= MAX_MEMBERS \
            or not all(isinstance(w, dict) and w for w in weights):
        raise ValueError(f"state_dicts: give 1 to {MAX_MEMBERS} members' weights")
    network = check_config(state, len(weights))
    for m, member in enumerate(weights):
        for name, tensor in member.items():
            if not isinstance(tensor, torch.Tensor) or not (tensor.is_floating_point() or tensor.dtype == torch.int64):
                raise ValueError(f"member {m} weight {str(name)[:60]}: not a tensor of numbers")
    if problem := weights_problem([{name: tuple(t.shape) for name, t in member.items()} for member in weights], network):
        raise ValueError(problem)
    for m, member in enumerate(weights):
        for name, tensor in member.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise ValueError(f"member {m} weight {str(name)[:60]}: holds NaN or infinite values")
    return network


def check_config(state: dict, members: int) -> Network:
    """The ``Network`` of a model file's ``model_config`` for ``members`` weight sets, every field
    checked before anything is built (``check_state``)."""
    if not isinstance(state, dict) or not isinstance(state.get("model_config"), dict):
        raise ValueError("model_config: missing, or not a table of fields")
    config = {"architecture": "Unet", **state["model_config"]}  # files from before the choice: U-Nets
    if "members" in state and (not isinstance(state["members"], list) or len(state["members"]) != members):
        raise ValueError(f"members: {str(state['members'])[:60]} does not describe the {members} weight sets")
    if state.get("trained_on") is not None and not isinstance(state["trained_on"], dict):
        raise ValueError("trained_on: not a table of fields")
    unknown = sorted(set(config) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"model_config: unknown fields {', '.join(map(str, unknown))}")
    try:
        network = build(Network, {**config, "encoder_weights": None, "members": members})
    except ParamsError as error:  # its message names params.yaml, where a training run's values come from
        raise ValueError(f"model_config: {str(error).removeprefix('params.yaml: ')}") from error
    if network.encoder not in smp.encoders.get_encoder_names():
        raise ValueError(f"model_config.encoder: {network.encoder[:60]!r} is not an encoder of segmentation-models-pytorch")
    if not 32 <= network.input_size <= MAX_INPUT_SIZE or network.input_size % 2 ** network.encoder_depth:
        raise ValueError(f"model_config.input_size: {network.input_size} must be 32-{MAX_INPUT_SIZE} pixels and a "
                         f"multiple of {2 ** network.encoder_depth}")
    channels = network.decoder_channels
    if len(channels) < network.encoder_depth or not all(1 <= c <= MAX_CHANNELS for c in channels):
        raise ValueError(f"model_config.decoder_channels: {str(channels)[:60]} needs {network.encoder_depth} sizes of "
                         f"1-{MAX_CHANNELS}")
    if any(p not in (1, 2) for p in network.member_phases()):
        raise ValueError(f"model_config.phases_per_input: {network.phases_per_input} (1 or 2 frames per input)")
    return network


def weights_problem(declared: list[dict[str, tuple[int, ...]]], network: Network) -> str | None:
    """Why weights of these names and shapes (one table per member) are not ``network``'s, or None.
    Compared before any weight is read, so a file that declares tensors of gigabytes beside a small
    network (which would be read whole and then refused) costs nothing."""
    for m, (stated, phases) in enumerate(zip(declared, network.member_phases(), strict=True)):
        have = dict(stated)
        _unprefixed_keys(None, have, "")  # older files' keys, as loading reads them
        want = _state_shapes(network, phases)
        if have != want:
            extra, missing = sorted(set(have) - set(want)), sorted(set(want) - set(have))
            shaped = sorted(name for name in set(have) & set(want) if have[name] != want[name])
            return (f"member {m}: weights not those of its network (" + "; ".join(
                f"{label} {', '.join(str(n)[:40] for n in names[:3])}" + (" ..." if len(names) > 3 else "")
                for label, names in (("unexpected", extra), ("missing", missing), ("other shape", shaped)) if names) + ")")
    return None


def model_fingerprint(path) -> str:
    """SHA-256 (16 hex digits) of what a model file or bundle folder holds: its weights and what
    built them; two models give the same fingerprint only if they compute the same thing."""
    import hashlib

    path = Path(path)
    digest = hashlib.sha256()
    for file in ([path / BUNDLE_MODEL, path / BUNDLE_WEIGHTS] if path.is_dir() else [path]):
        with open(regular_file(file), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def load_checkpoint(path, device: str = "cpu") -> tuple[list[PhaseStack], dict]:
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
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not a model file ({str(error).splitlines()[0][:200]})") from error
    try:
        network = check_state(state)
    except ValueError as error:
        raise CheckpointError(f"{path}: refused: {str(error).splitlines()[0][:200]}") from error
    try:
        # The weights come from the file, never from a download.
        models = []
        for weights, phases in zip(state["state_dicts"], network.member_phases(), strict=True):
            models.append(network_to_load(network, phases, device))
            models[-1].load_state_dict(weights)
    except (AttributeError, IndexError, KeyError, ParamsError, RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a model of this configuration ({str(error).splitlines()[0][:200]})") from error
    return [m.to(device, memory_format=torch.channels_last).eval() for m in models], state


def load_ensemble(paths: list[Path], device: str = "cpu") -> tuple[list[PhaseStack], int]:
    """Every member of the model files ``paths`` as one ensemble (the mean of all their softmax
    outputs), and their grid size; CheckpointError if they do not share one."""
    loaded = [load_checkpoint(path, device) for path in paths]
    sizes = {state["model_config"]["input_size"] for _, state in loaded}
    if len(sizes) != 1:
        raise CheckpointError(f"{', '.join(map(str, paths))}: models of several grid sizes ({sorted(sizes)}) in one ensemble")
    return [member for members, _ in loaded for member in members], sizes.pop()


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


def about_apex(images: torch.Tensor, factor: float, padding: str = "zeros") -> torch.Tensor:
    """Each image (N, C, S, S) resampled (bilinear) so that the point at distance d from the probe,
    the grid's top centre, is read from distance ``factor`` * d: ``factor`` > 1 shrinks the content
    toward the probe (what lies beyond the grid comes in as ``padding``, grid_sample's mode), < 1
    enlarges it. The probe as the training augmentation's scaling takes it (``augment.augment``)."""
    theta = images.new_tensor([[factor, 0.0, 0.0], [0.0, factor, factor - 1.0]]).expand(len(images), 2, 3)
    grid = torch.nn.functional.affine_grid(theta, images.shape, align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def check_tta_scales(scales) -> tuple[float, ...]:
    """The test-time scales as a tuple, each within ``TTA_SCALE_RANGE`` (1.0: the picture as it is)."""
    low, high = TTA_SCALE_RANGE
    scales = tuple(float(scale) for scale in scales)
    if not scales or not all(low <= scale <= high for scale in scales) or len(set(scales)) < len(scales):
        raise ValueError(f"test-time scales {list(scales)} must be distinct numbers from {low} to {high}")
    return scales


def softmax_batches(model: PhaseStack, images: torch.Tensor, batch_size: int, tta: bool, precision: str,
                    scales: tuple[float, ...] = (1.0,)):
    """Softmax probabilities (B, C, S, S) batch by batch, on the model's device, for normalised grid
    images (N, 1, S, S); with ``tta`` the mean over the image at three gammas (``TTA_GAMMAS``), and
    over each of ``scales``: the picture shrunk about the probe to that scale (``about_apex``), the
    network's probabilities mapped back onto the grid. Shrinking only, so every grid pixel maps back
    inside the shrunk picture and each scale gives a probability everywhere."""
    device = next(model.parameters()).device
    phases = model.phases_per_input
    batch_size = max(phases, batch_size - batch_size % phases)  # whole inputs only
    gammas = TTA_GAMMAS if tta else (None,)
    scales = check_tta_scales(scales)
    with torch.inference_mode(), autocast(precision, device):
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device).contiguous(memory_format=torch.channels_last)
            total = 0
            for scale in scales:
                shrunk = batch if scale == 1.0 else about_apex(batch, 1.0 / scale)
                for gamma in gammas:
                    probs = model(apply_gamma(shrunk, gamma) if tta else shrunk).float().softmax(1)
                    if scale != 1.0:
                        # Mapped back in float32; the top row reads within half a pixel of the grid's
                        # edge, where zeros would leak in: the border row is held instead.
                        with torch.autocast(device.type, enabled=False):
                            probs = about_apex(probs, scale, padding="border")
                    total = total + probs
            yield total / (len(scales) * len(gammas))


def predict_scores(model: PhaseStack, images: torch.Tensor, batch_size: int, tta: bool = False,
                   precision: str = "auto", scales: tuple[float, ...] = (1.0,)) -> torch.Tensor:
    """Softmax probabilities (N, C, S, S) on the CPU for normalised grid images (N, 1, S, S);
    ``precision`` as in ``runtime.autocast_dtype``, ``tta`` and ``scales`` as in ``softmax_batches``."""
    return torch.cat([probs.cpu() for probs in softmax_batches(model, images, batch_size, tta, precision, scales)])

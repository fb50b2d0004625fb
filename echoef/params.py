"""Load ``params.yaml`` and check it against the schema below, with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import yaml

from . import calibration, simpson


class ParamsError(ValueError):
    """A configuration mistake: the message names the key and what is allowed."""


def _choice(*allowed):
    def check(key, value):
        if value not in allowed:
            raise ParamsError(f"params.yaml: {key} = {value!r} is not allowed; choose one of: "
                              + ", ".join(repr(a) for a in allowed))
    return check


def _typed(*types, minimum=None, maximum=None):
    def check(key, value):
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ParamsError(f"params.yaml: {key} = {value!r} must be {names}")
        if minimum is not None and isinstance(value, (int, float)) and value < minimum:
            raise ParamsError(f"params.yaml: {key} = {value!r} must be >= {minimum}")
        if maximum is not None and isinstance(value, (int, float)) and value > maximum:
            raise ParamsError(f"params.yaml: {key} = {value!r} must be <= {maximum}")
    return check


def _pair_in_0_100(key, value):
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
            and 0 <= value[0] < value[1] <= 100):
        raise ParamsError(f"params.yaml: {key} = {value!r} must be [low, high] with 0 <= low < high <= 100")


def _fold_seeds(key, value):
    if not (isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, int) for k, v in value.items())
            and sorted(value) == [str(i) for i in range(len(value))]):
        raise ParamsError(f"params.yaml: {key} = {value!r} must map quoted fold ids \"0\", \"1\", ... to integer seeds "
                          "(DVC's foreach needs string keys), or be {} without cross-validation")


def _phases(key, value):
    entries = value if isinstance(value, list) else [value]
    if not entries or any(type(v) is not int or v not in (1, 2) for v in entries):
        raise ParamsError(f"params.yaml: {key} = {value!r} must be 1, 2, or a list of 1s and 2s with one entry per "
                          "ensemble member (train.members)")


def _int_list(key, value):
    if not (isinstance(value, list) and value and all(isinstance(v, int) and v > 0 for v in value)):
        raise ParamsError(f"params.yaml: {key} = {value!r} must be a list of positive integers")


NUMBER = (int, float)
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 mixed precision where the hardware has it (model.has_native_bf16)
SCHEMA = {
    "data": {
        "root": _typed(str),
        "phantom": {"n_patients": _typed(int, minimum=6), "seed": _typed(int)},
    },
    "ingest": {"strict": _typed(bool)},
    "split": {
        "seed": _typed(int),
        "val_fraction": _typed(*NUMBER, minimum=0.01, maximum=0.9),
        "test_fraction": _typed(*NUMBER, minimum=0.01, maximum=0.9),
        "folds": _typed(int, minimum=0),
        "inner_val_fraction": _typed(*NUMBER, minimum=0.05, maximum=0.5),
    },
    "cv": {"fold_seeds": _fold_seeds},
    "train": {
        "device": _choice("auto", "cpu", "cuda"),
        "encoder": _typed(str),
        "encoder_weights": _typed(str, type(None)),
        "encoder_depth": _typed(int, minimum=3, maximum=5),
        "decoder_channels": _int_list,
        "input_size": _typed(int, minimum=32),
        "epochs": _typed(int, minimum=1),
        "batch_size": _typed(int, minimum=1),
        "phases_per_input": _phases,
        "lr": _typed(*NUMBER, minimum=0),
        "weight_decay": _typed(*NUMBER, minimum=0),
        "dice_weight": _typed(*NUMBER, minimum=0),
        "ce_weight": _typed(*NUMBER, minimum=0),
        "seed": _typed(int),
        "members": _typed(int, minimum=1),
        "ema_decay": _typed(*NUMBER, minimum=0, maximum=0.9999),
        "threads": _typed(int, minimum=0),
        "processes": _typed(int, minimum=1),
        "parallel_members": _typed(int, minimum=1),
        "precision": _choice(*PRECISIONS),
        "augment": {
            "rotation_deg": _typed(*NUMBER, minimum=0),
            "scale": _typed(*NUMBER, minimum=0, maximum=0.5),
            "gamma": _typed(*NUMBER, minimum=0, maximum=1),
            "blur_sigma_px": _typed(*NUMBER, minimum=0, maximum=5),
            "noise_std": _typed(*NUMBER, minimum=0),
        },
    },
    "infer": {"tta": _typed(bool), "batch_size": _typed(int, minimum=1), "precision": _choice(*PRECISIONS)},
    "ef": {"method": _choice(*simpson.METHODS)},
    "calibration": {"method": _choice(*calibration.METHODS), "fit_set": _choice("val", "oof"), "ef_range": _pair_in_0_100},
    "evaluate": {"bootstrap": _typed(int, minimum=0), "seed": _typed(int), "overlays": _typed(int, minimum=0)},
}


def _check_keys(params: dict, schema: dict, prefix: str = "") -> None:
    if not isinstance(params, dict):
        raise ParamsError(f"params.yaml: {prefix.rstrip('.') or 'the file'} must be a mapping")
    for key in params:
        if key not in schema:
            raise ParamsError(f"params.yaml: unknown key {prefix + key!r}; allowed here: {', '.join(schema)}")
    for key, check in schema.items():
        if key not in params:
            raise ParamsError(f"params.yaml: missing key {prefix + key!r}")
        if isinstance(check, dict):
            _check_keys(params[key], check, prefix + key + ".")
        else:
            check(prefix + key, params[key])


def member_phases(train: dict) -> list[int]:
    """Frames per network input of each ensemble member: ``phases_per_input`` is one number for all
    members or a list with one entry per member (a mixed ensemble)."""
    phases = train["phases_per_input"]
    return list(phases) if isinstance(phases, list) else [phases] * train["members"]


def validate(params: dict) -> None:
    """Raise ParamsError for an unknown or missing key, a value of the wrong type or range, or
    settings that contradict each other."""
    _check_keys(params, SCHEMA)
    folds, seeds = params["split"]["folds"], params["cv"]["fold_seeds"]
    if len(seeds) != (folds if folds > 1 else 0):
        expected = "{" + ", ".join(f'"{i}": {i}' for i in range(folds)) + "}" if folds > 1 else "{}"
        raise ParamsError(f"params.yaml: cv.fold_seeds has {len(seeds)} entries but split.folds = {folds}; "
                          f"use cv.fold_seeds: {expected}")
    train = params["train"]
    phases = train["phases_per_input"]
    if isinstance(phases, list) and len(phases) != train["members"]:
        raise ParamsError(f"params.yaml: train.phases_per_input = {phases!r} has {len(phases)} entries but "
                          f"train.members = {train['members']}; give one entry per member, or one number for all")
    if train["batch_size"] % max(member_phases(train)):
        raise ParamsError(f"params.yaml: train.batch_size = {train['batch_size']} counts frames and must be a multiple of "
                          f"train.phases_per_input = {phases}")
    if train["parallel_members"] > 1 and train["processes"] > 1:
        raise ParamsError("params.yaml: train.parallel_members > 1 (members in parallel processes) cannot be combined with "
                          "train.processes > 1 (one member at a time across processes); set one of them to 1")
    if params["calibration"]["fit_set"] == "oof" and folds <= 1:
        raise ParamsError("params.yaml: calibration.fit_set = 'oof' needs cross-validation (split.folds > 1)")


def load(path: str | Path = "params.yaml") -> dict:
    """Read and validate the parameters file."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError as error:
        raise ParamsError(f"{path} not found; run from the repository root") from error
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from error
    validate(params)
    return params

"""``params.yaml`` as typed, validated objects, built once by ``load``; errors name the key and the fix.

params.yaml is composed (Hydra, as `dvc exp run` does it) from ``conf/config.yaml`` and one profile
of ``conf/profile/``. Each section is a frozen dataclass whose fields carry their own check, so the
schema and the type are one thing. Stages read their section and pass its fields on as keywords.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .domain import CALIBRATION_METHODS, EF_METHODS, NETWORK_ARCHITECTURES, TTA_SCALE_RANGE
from .errors import ParamsError

PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 mixed precision where the hardware has it (runtime.has_native_bf16)


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
    # Fold ids are names (fold_0, fold_1, ...): DVC's foreach silently ignores number keys, which is
    # what Hydra writes for `{0:0,1:1}` and cannot be quoted there, so such a run would have no fold.
    if not (isinstance(value, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in value.values())
            and sorted(value, key=str) == sorted(fold_ids(len(value)))):
        raise ParamsError(f"params.yaml: {key} = {value!r} must map fold ids fold_0, fold_1, ... to integer seeds "
                          "(dvc exp run -S '++cv.fold_seeds={fold_0:0,fold_1:1}'), or be {} without cross-validation")


def fold_ids(folds: int) -> list[str]:
    """The names of K folds as ``cv.fold_seeds`` keys them and the fold stages and folders are named."""
    return [f"fold_{fold}" for fold in range(folds)]


def _phases(key, value):
    entries = value if isinstance(value, list) else [value]
    if not entries or any(type(v) is not int or v not in (1, 2) for v in entries):
        raise ParamsError(f"params.yaml: {key} = {value!r} must be 1, 2, or a list of 1s and 2s with one entry per "
                          "ensemble member (train.network.members)")


def _int_list(key, value):
    if not (isinstance(value, list) and value and all(isinstance(v, int) and v > 0 for v in value)):
        raise ParamsError(f"params.yaml: {key} = {value!r} must be a list of positive integers")


def _key(check):
    """A dataclass field whose value ``check(key, value)`` validates."""
    return field(metadata={"check": check})


NUMBER = (int, float)


@dataclass(frozen=True)
class Phantom:
    n_patients: int = _key(_typed(int, minimum=6))
    seed: int = _key(_typed(int))


@dataclass(frozen=True)
class Data:
    root: str = _key(_typed(str))
    phantom: Phantom = _key(None)


@dataclass(frozen=True)
class Ingest:
    strict: bool = _key(_typed(bool))


@dataclass(frozen=True)
class Split:
    seed: int = _key(_typed(int))
    val_fraction: float = _key(_typed(*NUMBER, minimum=0.01, maximum=0.9))
    test_fraction: float = _key(_typed(*NUMBER, minimum=0.01, maximum=0.9))
    folds: int = _key(_typed(int, minimum=0))
    inner_val_fraction: float = _key(_typed(*NUMBER, minimum=0.05, maximum=0.5))


@dataclass(frozen=True)
class CV:
    fold_seeds: dict = _key(_fold_seeds)


@dataclass(frozen=True)
class Network:
    """What builds the networks (and is saved with their weights)."""

    architecture: str = _key(_choice(*NETWORK_ARCHITECTURES))
    encoder: str = _key(_typed(str))
    encoder_weights: str | None = _key(_typed(str, type(None)))
    encoder_depth: int = _key(_typed(int, minimum=3, maximum=5))
    decoder_channels: list = _key(_int_list)
    input_size: int = _key(_typed(int, minimum=32))
    phases_per_input: int | list = _key(_phases)
    members: int = _key(_typed(int, minimum=1))

    def __post_init__(self):
        phases = self.phases_per_input
        if isinstance(phases, list) and len(phases) != self.members:
            raise ParamsError(f"params.yaml: train.network.phases_per_input = {phases!r} has {len(phases)} entries but "
                              f"train.network.members = {self.members}; give one entry per member, or one number for all")

    def member_phases(self) -> list[int]:
        """Frames per network input of each ensemble member: one number for all, or one per member."""
        phases = self.phases_per_input
        return list(phases) if isinstance(phases, list) else [phases] * self.members


@dataclass(frozen=True)
class Optimisation:
    epochs: int = _key(_typed(int, minimum=1))
    batch_size: int = _key(_typed(int, minimum=1))
    lr: float = _key(_typed(*NUMBER, minimum=0))
    weight_decay: float = _key(_typed(*NUMBER, minimum=0))
    dice_weight: float = _key(_typed(*NUMBER, minimum=0))
    ce_weight: float = _key(_typed(*NUMBER, minimum=0))
    ema_decay: float = _key(_typed(*NUMBER, minimum=0, maximum=0.9999))
    ef_weight: float = _key(_typed(*NUMBER, minimum=0))
    es_weight: float = _key(_typed(*NUMBER, minimum=0))

    @property
    def pairs_phases(self) -> bool:
        """Whether batches must hold each view's ED and ES frames together (the EF and ES terms need both)."""
        return self.ef_weight > 0 or self.es_weight > 0


@dataclass(frozen=True)
class Augment:
    rotation_deg: float = _key(_typed(*NUMBER, minimum=0))
    scale: float = _key(_typed(*NUMBER, minimum=0, maximum=0.5))
    gamma: float = _key(_typed(*NUMBER, minimum=0, maximum=1))
    blur_sigma_px: float = _key(_typed(*NUMBER, minimum=0, maximum=5))
    noise_std: float = _key(_typed(*NUMBER, minimum=0))


@dataclass(frozen=True)
class Runtime:
    """Where and how the training runs; no effect on what a CPU run computes."""

    device: str = _key(_choice("auto", "cpu", "cuda"))
    threads: int = _key(_typed(int, minimum=0))
    processes: int = _key(_typed(int, minimum=1))
    parallel_members: int = _key(_typed(int, minimum=1))
    precision: str = _key(_choice(*PRECISIONS))


@dataclass(frozen=True)
class Train:
    seed: int = _key(_typed(int))
    network: Network = _key(None)
    optimisation: Optimisation = _key(None)
    augment: Augment = _key(None)
    runtime: Runtime = _key(None)

    def __post_init__(self):
        phases, batch = self.network.phases_per_input, self.optimisation.batch_size
        if batch % max(self.network.member_phases()):
            raise ParamsError(f"params.yaml: train.optimisation.batch_size = {batch} counts frames and must be a multiple "
                              f"of train.network.phases_per_input = {phases}")
        if self.optimisation.pairs_phases and batch % 2:
            raise ParamsError(f"params.yaml: train.optimisation.batch_size = {batch} must be even with train.optimisation.ef_weight "
                              "or es_weight > 0 (a view's ED and ES frames are drawn together)")
        if self.runtime.parallel_members > 1 and self.runtime.processes > 1:
            raise ParamsError("params.yaml: train.runtime.parallel_members > 1 (members in parallel processes) cannot be "
                              "combined with train.runtime.processes > 1 (one member at a time across processes); "
                              "set one of them to 1")


def _tta_scales(key, value):
    low, high = TTA_SCALE_RANGE
    if not (isinstance(value, list) and value and all(isinstance(v, NUMBER) and not isinstance(v, bool) and low <= v <= high
                                                      for v in value) and len(set(value)) == len(value)):
        raise ParamsError(f"params.yaml: {key} = {value!r} must be a list of distinct scales from {low} to {high}, "
                          "e.g. [1.0] (the picture as it is) or [1.0, 0.95, 0.9]")


@dataclass(frozen=True)
class Infer:
    tta: bool = _key(_typed(bool))
    tta_scales: list = _key(_tta_scales)
    batch_size: int = _key(_typed(int, minimum=1))
    precision: str = _key(_choice(*PRECISIONS))


@dataclass(frozen=True)
class EF:
    method: str = _key(_choice(*EF_METHODS))


@dataclass(frozen=True)
class Calibration:
    method: str = _key(_choice(*CALIBRATION_METHODS))
    fit_set: str = _key(_choice("val", "oof"))
    ef_range: list = _key(_pair_in_0_100)


@dataclass(frozen=True)
class Evaluate:
    bootstrap: int = _key(_typed(int, minimum=0))
    seed: int = _key(_typed(int))
    overlays: int = _key(_typed(int, minimum=0))
    interval: float = _key(_typed(float, minimum=0.5, maximum=0.99))


@dataclass(frozen=True)
class Params:
    profile: str = _key(_typed(str))
    data: Data = _key(None)
    ingest: Ingest = _key(None)
    split: Split = _key(None)
    cv: CV = _key(None)
    train: Train = _key(None)
    infer: Infer = _key(None)
    ef: EF = _key(None)
    calibration: Calibration = _key(None)
    evaluate: Evaluate = _key(None)

    def __post_init__(self):
        folds, seeds = self.split.folds, self.cv.fold_seeds
        if len(seeds) != (folds if folds > 1 else 0):
            expected = "{" + ",".join(f"{name}:{i}" for i, name in enumerate(fold_ids(folds))) + "}" if folds > 1 else "{}"
            raise ParamsError(f"params.yaml: cv.fold_seeds has {len(seeds)} entries but split.folds = {folds}; "
                              f"use -S '++cv.fold_seeds={expected}'")
        if self.calibration.fit_set == "oof" and folds <= 1:
            raise ParamsError("params.yaml: calibration.fit_set = 'oof' needs cross-validation (split.folds > 1)")


def build(cls, mapping, prefix: str = ""):
    """An instance of the dataclass ``cls`` from a nested mapping, every key checked: an unknown or
    missing key, a value of the wrong type or range, or settings that contradict each other raise
    ParamsError naming the key."""
    if not isinstance(mapping, dict):
        raise ParamsError(f"params.yaml: {prefix.rstrip('.') or 'the file'} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in mapping:
        if key not in fields:
            raise ParamsError(f"params.yaml: unknown key {prefix + str(key)!r}; allowed here: {', '.join(fields)}")
    types = typing.get_type_hints(cls)
    values = {}
    for name, spec in fields.items():
        if name not in mapping:
            raise ParamsError(f"params.yaml: missing key {prefix + name!r}")
        if dataclasses.is_dataclass(types[name]):
            values[name] = build(types[name], mapping[name], prefix + name + ".")
        else:
            spec.metadata["check"](prefix + name, mapping[name])
            values[name] = mapping[name]
    return cls(**values)


def as_dict(section) -> dict:
    """The plain nested-dict form of a section (for checkpoints and run records)."""
    return dataclasses.asdict(section)


def compose(output: str | Path, overrides: list[str] = (), repo: str | Path = ".") -> None:
    """Write ``output`` as `dvc exp run` writes params.yaml: ``conf/config.yaml`` composed with its
    profile (``conf/profile/``) and Hydra ``overrides`` such as ``profile=camus-cpu``."""
    from dvc.utils.hydra import compose_and_dump  # DVC and Hydra only for this

    repo = Path(repo).resolve()
    compose_and_dump(output, str(repo / "conf"), None, "config", str(repo), list(overrides))


def load_profile(profile: str, repo: str | Path = ".") -> Params:
    """The parameters `dvc exp run -S profile=<profile>` would run with (``conf/`` composed), for
    scripts that measure a profile without touching the workspace's params.yaml."""
    import tempfile

    profiles = Path(repo) / "conf" / "profile"
    if not (profiles / f"{profile}.yaml").is_file():
        known = ", ".join(sorted(path.stem for path in profiles.glob("*.yaml")))
        raise ParamsError(f"no profile '{profile}' in {profiles}; give one of: {known}")
    with tempfile.TemporaryDirectory() as folder:
        compose(Path(folder) / "params.yaml", [f"profile={profile}"], repo)
        return load(Path(folder) / "params.yaml")


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate the parameters file."""
    path = Path(path)
    try:
        mapping = yaml.safe_load(path.read_text())
    except FileNotFoundError as error:
        raise ParamsError(f"{path} not found; run from the repository root or give its path") from error
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from error
    return build(Params, mapping)

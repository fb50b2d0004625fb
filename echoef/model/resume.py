"""Training that goes on after an interruption: a network's whole training state, saved between
epochs, so that a run killed mid-way (a closed laptop, a batch system's time limit, a session that
ends: a CPU run of the CAMUS recipe takes hours) continues from its last saved epoch and ends with
the weights an uninterrupted run gives, bit for bit on CPU.

A saved state is used only by the training it came from: its file is named by ``resume_key``, a
digest of everything that decides what the training computes (the configuration with its seed, the
frames per input, the training and validation tensors, the device and precision, torch's version and
EchoEF's own source). Anything else finds no file and starts from the first epoch. The
folder is EchoEF's own (``claim_folder``): it holds nothing but these files, and a training removes
the ones no longer of use (other keys) when it starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import torch

from ..io.atomic import OWNER_MARK, atomic_path, claim_folder
from .runtime import precision_name

RESUME_EVERY_S = 300.0  # at most this much training lost to a kill; a save of ~300 MB is about a second
EVERY_S_VARIABLE = "ECHOEF_RESUME_EVERY_S"  # another interval, for a machine lent for minutes
SUFFIX = ".resume.pt"
FORMAT = 1


def _source_digest() -> str:
    """SHA-256 of EchoEF's own Python source, every module: a change anywhere gives another key
    (conservative: a change that leaves training alone also starts it afresh)."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _tensor_digest(tensors) -> str:
    """SHA-256 of tensors' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for tensor in tensors:
        contiguous = tensor.detach().cpu().contiguous()
        digest.update(f"{contiguous.dtype}{tuple(contiguous.shape)}".encode())
        if contiguous.numel():
            digest.update(contiguous.view(torch.uint8).numpy())  # the buffer itself: no copy of the data set
    return digest.hexdigest()


def resume_key(config, phases_per_input: int, train_set, val_set, device: str) -> str:
    """The name of one network's saved state: a digest of every input that decides its training."""
    facts = {"format": FORMAT, "config": dataclasses.asdict(config), "phases_per_input": phases_per_input,
             "data": _tensor_digest([*train_set, *val_set]), "device": str(device),
             "precision": precision_name(config.runtime.precision, device), "torch": torch.__version__, "source": _source_digest()}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def save_interval_s() -> float:
    """Seconds between saves: ``RESUME_EVERY_S``, or the environment's ``ECHOEF_RESUME_EVERY_S`` where it
    holds a finite number of 0 or more (anything else is a warning and the default)."""
    text = os.environ.get(EVERY_S_VARIABLE)
    if text is None:
        return RESUME_EVERY_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not (0 <= seconds < float("inf")):
        warnings.warn(f"{EVERY_S_VARIABLE}={text[:40]!r} is not a number of seconds of 0 or more; saving every "
                      f"{RESUME_EVERY_S:g} s", stacklevel=2)
        return RESUME_EVERY_S
    return seconds


@dataclasses.dataclass
class Resume:
    """Where one network's training state is kept (``folder/<key>.resume.pt``) and how often it is
    saved (at the end of an epoch once ``every_s`` seconds have passed since the last save, and
    always at the end of the last epoch, so that a finished member of an ensemble is not trained
    again when a later one is interrupted)."""

    folder: Path
    key: str
    every_s: float = dataclasses.field(default_factory=save_interval_s)
    last_save: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def path(self) -> Path:
        return Path(self.folder) / f"{self.key}{SUFFIX}"

    def load(self) -> dict | None:
        """The saved state, or None where there is none. One that cannot be read (a disk that filled,
        another torch) is set aside with a warning: the training starts from its first epoch."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not (isinstance(state, dict) and state.get("format") == FORMAT and state.get("key") == self.key):
                raise ValueError("not a saved training state of this key")
        except Exception as error:  # noqa: BLE001 - any unreadable state means the same: start again
            warnings.warn(f"{self.path}: saved training state not usable ({str(error)[:200]}); training from the first "
                          "epoch", stacklevel=2)
            return None
        return state

    def due(self, last_epoch: bool) -> bool:
        return last_epoch or time.monotonic() - self.last_save >= self.every_s

    def save(self, state: dict) -> None:
        """Write ``state`` whole or not at all (a kill mid-save leaves the previous one). A save that
        fails (a full disk) is a warning: the training goes on, only less of it can be resumed."""
        try:
            with atomic_path(self.path) as tmp:
                torch.save({"format": FORMAT, "key": self.key, **state}, tmp)
        except OSError as error:
            warnings.warn(f"{self.path}: training state not saved ({error}); the training goes on", stacklevel=2)
        self.last_save = time.monotonic()


def prepare_folder(folder: str | Path, keys: list[str]) -> Path:
    """Claim ``folder`` as EchoEF's (ForeignFolderError for someone else's non-empty folder) and remove
    its saved states of other keys: another configuration's, never to be resumed."""
    folder = claim_folder(folder, "--resume")
    for entry in folder.iterdir():
        if entry.name.endswith(SUFFIX) and entry.name[: -len(SUFFIX)] not in keys and entry.is_file():
            entry.unlink()
    return folder


def clear(folder: str | Path) -> None:
    """Remove the saved states in ``folder`` (a ``prepare_folder``'d one holds only the current
    training's) once the model they led to is written, and the folder itself if nothing else is left."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink() or not (folder / OWNER_MARK).is_file():
        return
    for entry in folder.iterdir():
        if entry.name.endswith(SUFFIX) and entry.is_file() and not entry.is_symlink():
            entry.unlink()
    if {entry.name for entry in folder.iterdir()} <= {OWNER_MARK}:
        (folder / OWNER_MARK).unlink(missing_ok=True)
        folder.rmdir()

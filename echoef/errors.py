"""The errors a user can do something about. Each reaches the user as one line (stages and commands
exit with status 2), or, for one study in a batch, as that study's status."""

from __future__ import annotations


class StudyError(ValueError):
    """A study (or one of its files) that cannot be used; ``reason`` is the short code written to
    the exclusion table or the status column, ``detail`` says what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ParamsError(ValueError):
    """A configuration mistake: the message names the key and what is allowed."""


class UsageError(ValueError):
    """A mistake in how a command was called (a path that is not there, an output that cannot be
    written), reported before any work is done."""


class ForeignFolderError(UsageError):
    """An output folder that holds files EchoEF did not write: never written over or deleted."""


class IngestError(RuntimeError):
    """Ingest cannot produce a dataset (no patient, or an exclusion under ``strict``)."""


class SplitError(ValueError):
    """A split that cannot be made or leaves a set empty."""


class CheckpointError(ValueError):
    """A model file that cannot be used with this code or configuration, or that is not safe to load."""


class DeviceError(ValueError):
    """A device asked for that this machine does not have."""


USER_ERRORS = (StudyError, ParamsError, UsageError, IngestError, SplitError, CheckpointError, DeviceError, FileNotFoundError)

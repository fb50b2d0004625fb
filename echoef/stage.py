"""What every stage script shares: a clean one-line message for the errors a user can fix."""

from __future__ import annotations

import sys

from .dataset import IngestError
from .model import CheckpointError, DeviceError
from .params import ParamsError
from .split import SplitError
from .status import StudyError

USER_ERRORS = (ParamsError, IngestError, SplitError, CheckpointError, DeviceError, StudyError, FileNotFoundError)


def run(main) -> None:
    """Call ``main``; a user-fixable error ends the stage with its message and exit status 2."""
    try:
        main()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

"""What every stage script shares: a clean one-line message for the errors a user can fix, and the
stage's wall time kept for run records."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .errors import USER_ERRORS

# DVC names the stage it runs (DVC_STAGE, e.g. train_fold@fold_0) and the repository (DVC_ROOT).
TIMES_DIR = Path(".dvc/tmp/stage_seconds")


def _process_seconds() -> float:
    """Wall seconds since this process started (imports included), from the kernel's start time."""
    import psutil  # installed with DVC

    return time.time() - psutil.Process().create_time()


def run(main) -> None:
    """Call ``main``; a user-fixable error ends the stage with its message and exit status 2. A
    stage run by DVC leaves its wall time in .dvc/tmp/stage_seconds/<stage>.json (``record`` reads it)."""
    try:
        main()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    stage, root = os.environ.get("DVC_STAGE"), os.environ.get("DVC_ROOT")
    if stage and root and os.environ.get("RANK", "0") == "0":  # one process of several writes it
        path = Path(root) / TIMES_DIR / f"{stage}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"stage": stage, "seconds": round(_process_seconds(), 1),
                                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))

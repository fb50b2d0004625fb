"""What every stage script shares: a clean one-line message for the errors a user can fix."""

from __future__ import annotations

import sys

from .errors import USER_ERRORS


def run(main) -> None:
    """Call ``main``; a user-fixable error ends the stage with its message and exit status 2."""
    try:
        main()
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

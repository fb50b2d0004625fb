"""How a study's outcome is told: a status per row ('ok...' when measured, else a short reason
code), and StudyError, which carries such a code out of the code that found the problem."""

from __future__ import annotations


class StudyError(ValueError):
    """A study (or one of its files) that cannot be used; ``reason`` is the short code written to
    the exclusion table or the status column, ``detail`` says what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def is_measured(status) -> bool:
    """Whether a row's status carries an EF: 'ok', or 'ok_<warning>' such as ok_single_plane."""
    return str(status).startswith("ok")

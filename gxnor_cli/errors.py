"""The exception types the CLI turns into one line on stderr.

:class:`UserError` (a mistake a user can fix: config, data, files) exits 2;
:class:`RunFailed` (a run that failed for a reason already said in full) exits 1; anything
else is an unexpected failure: its traceback, then exit 1.
"""


class UserError(Exception):
    """A problem with what the user gave us: bad config, missing or corrupt files."""


class RunFailed(Exception):
    """The run failed, and this one line says why (its run is already marked FAILED)."""

"""The one exception type for mistakes a user can fix (config, data, files).

The CLI turns a :class:`UserError` into one line on stderr and exit code 2;
anything else is a failed run (exit 1).
"""


class UserError(Exception):
    """A problem with what the user gave us: bad config, missing or corrupt files."""

"""Exceptions that carry a sentence a user can act on.

The CLI prints these without a traceback and exits with status 2; anything else
is a bug and keeps its traceback.
"""


class DefectgenError(Exception):
    """Base of every error that is the input's fault, not the program's."""


class ConfigError(DefectgenError):
    """params.yaml (or a command-line option) is wrong: names the key, value and what is allowed."""


class DataError(DefectgenError):
    """The dataset cannot be used as given: names the files, the problem and the fix."""

"""Known, user-facing errors.

Front ends print an ``OfgrError`` as one line (no traceback unless ``OFGR_DEBUG=1``) and exit with its code.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # unexpected error (a bug): traceback shown
    USAGE = 2  # bad command line
    CONFIG = 3  # invalid config file or override
    DATA = 4  # dataset missing, malformed, or unusable for the protocol
    NOT_FOUND = 5  # run, file or checkpoint not found
    DEPENDENCY = 6  # an optional dependency or weight file is missing
    INTERRUPTED = 130


class OfgrError(Exception):
    """An error the user can fix; its message is one line that says what and where."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(OfgrError):
    exit_code = ExitCode.CONFIG


class DataError(OfgrError):
    exit_code = ExitCode.DATA


class NotFoundError(OfgrError):
    exit_code = ExitCode.NOT_FOUND


class DependencyError(OfgrError):
    exit_code = ExitCode.DEPENDENCY

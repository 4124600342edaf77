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
    NUMERIC = 7  # training diverged: a non-finite loss or gradient (train.nonfinite=stop)
    DISK = 8  # no space left, or the runs/cache folder is not writable
    CONFLICT = 9  # the run is in use: another live process runs or resumes it (or holds it, stopped)
    INTERRUPTED = 130  # SIGINT (Ctrl-C) or a stop request; the run can be resumed
    TERMINATED = 143  # SIGTERM; the run checkpointed and can be resumed


class OfgrError(Exception):
    """An error the user can fix; its message is one line that says what and where.

    Control characters from user input (a newline in a key, a NUL in a file name) are shown escaped, so the
    message stays one line whatever text it quotes.
    """

    exit_code: ExitCode = ExitCode.FAILURE

    def __str__(self) -> str:
        text = super().__str__()
        if text.isprintable():
            return text
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class UsageError(OfgrError):
    """A bad command-line argument (not a config key)."""

    exit_code = ExitCode.USAGE


class ConfigError(OfgrError):
    exit_code = ExitCode.CONFIG


class DataError(OfgrError):
    exit_code = ExitCode.DATA


class NotFoundError(OfgrError):
    exit_code = ExitCode.NOT_FOUND


class DependencyError(OfgrError):
    exit_code = ExitCode.DEPENDENCY


class NonFiniteError(OfgrError):
    """Training produced a NaN/Inf loss or gradient."""

    exit_code = ExitCode.NUMERIC


class DiskError(OfgrError):
    """Not enough free space, or a folder that cannot be written."""

    exit_code = ExitCode.DISK


class ConflictError(OfgrError):
    """The run folder is held by another live process (running, stopped by SIGSTOP, or being resumed)."""

    exit_code = ExitCode.CONFLICT


class CheckpointError(OfgrError):
    """A checkpoint that is unreadable or holds more than tensors and plain data (never executed)."""

    exit_code = ExitCode.DATA

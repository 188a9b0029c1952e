"""The exceptions reslim raises.

Every message names the field, file or array at fault and the value found, as the
``reslim`` command line does. Missing files raise the built-in ``FileNotFoundError``;
Ctrl-C raises ``KeyboardInterrupt`` after the running work has stopped (a sweep keeps
every finished task).
"""

from typing import Optional

__all__ = [
    "ReslimError",
    "SpecError",
    "DataError",
    "DivergenceError",
    "MemoryLimitError",
    "StaleResultsError",
    "BusyError",
]


class ReslimError(Exception):
    """Base class of reslim's errors."""


class SpecError(ReslimError, ValueError):
    """A spec field or argument is invalid (unknown, out of range, inconsistent)."""


class DataError(ReslimError, ValueError):
    """A file or array is unusable: wrong shape, dtype or memory order, not finite."""


class DivergenceError(ReslimError, ArithmeticError):
    """Training diverged. ``step`` is the GD step, ``layer`` the block (or None when the
    read-out or the loss overflowed with every hidden state finite)."""

    def __init__(self, message: str, step: Optional[int] = None, layer: Optional[int] = None):
        super().__init__(message)
        self.step = step
        self.layer = layer


class MemoryLimitError(ReslimError, MemoryError):
    """The work needs more memory than available; refused before allocating."""


class StaleResultsError(ReslimError, RuntimeError):
    """The output directory holds results of a different spec (pass ``redo_stale=True``
    to retrain them, or choose another directory)."""


class BusyError(ReslimError, RuntimeError):
    """Another process is working in the output directory."""

"""Error types. Every error a user can cause is a `MupathError` whose message is one line that names
the problem and the fix; the CLI prints it and exits non-zero instead of showing a traceback."""
from __future__ import annotations


class MupathError(Exception):
    """Base class: a problem the user can fix (bad input, bad store, bad settings)."""


class DataError(MupathError):
    """A task source or array that cannot become a valid `Task`."""


class ConfigError(MupathError):
    """Contradictory or out-of-range settings, unknown names, unsupported root models."""


class StoreError(MupathError):
    """A store that is missing, corrupted, locked, newer than this version, or not writable."""


class ForgettingError(MupathError):
    """A committed task's predictions changed: the no-forgetting guarantee was violated."""

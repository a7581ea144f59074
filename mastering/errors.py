"""Typed errors. Every user-facing failure is one of these, with a message naming the file
(when there is one) and the problem, so the CLI, the farm and the Serve app can report it
without a traceback."""

from __future__ import annotations

from pathlib import Path


class LacquerError(Exception):
    """Base class. ``path`` is the file concerned, if any; ``problem`` the plain reason."""

    def __init__(self, problem: str, path: str | Path | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class AudioReadError(LacquerError):
    """The file cannot be read as audio (missing, empty, corrupt, truncated, not audio)."""


class UnsupportedAudioError(LacquerError):
    """The file is audio but in a form Lacquer does not take (channel count, sample rate)."""


class AudioWriteError(LacquerError):
    """The output cannot be written (unwritable path, unsupported format/subtype)."""


class InvalidAudioError(LacquerError):
    """The samples themselves are unusable (NaN or Inf values)."""


class InvalidParameterError(LacquerError, ValueError):
    """A user-supplied parameter (genre, emotion, target, format ...) is not valid."""

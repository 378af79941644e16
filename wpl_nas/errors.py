"""Errors raised for bad user input."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration value, file or name given by the user is invalid.

    The message always names the offending value and, where there is a closed set, the
    valid choices. The CLI turns it into a usage error (exit code 2, no traceback).
    """

"""The configuration in force: one holder that every reader asks, and a reload swaps.

A reload builds a whole new `Config` and swaps it in here, in one assignment on the
event loop; a call that already read the config keeps the values it read, the next call
reads the new ones. Nothing else keeps a copy of a value that a reload may change.
"""

from __future__ import annotations

from .config import Config


class LiveConfig:
    """Holds the Config in force."""

    def __init__(self, config: Config) -> None:
        self._config = config

    @property
    def current(self) -> Config:
        """The config in force now."""
        return self._config

    def swap(self, config: Config) -> None:
        """Put config in force (the reload's one write)."""
        self._config = config

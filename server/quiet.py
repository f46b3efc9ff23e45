"""Python warnings through logging, and the one known third-party deprecation silenced.

asyncssh 2.x names cryptography's DSA types at import time, and cryptography deprecates
DSA, so every start printed five `CryptographyDeprecationWarning`s (ten lines, `--help`
too) that broke a JSON log stream and that no operator can act on. That one warning is
ignored by its exact category, message and module; any other warning goes through
`logging` (`logging.captureWarnings`), so it comes out in the chosen log format.
"""

from __future__ import annotations

import logging
import warnings

from cryptography.utils import CryptographyDeprecationWarning

__all__ = ["route_warnings_to_logging", "silence_known_warnings"]


def silence_known_warnings() -> None:
    """Ignore asyncssh's DSA deprecation; call before asyncssh is imported."""
    warnings.filterwarnings(
        "ignore",
        message=r"DSA is deprecated",
        category=CryptographyDeprecationWarning,
        module=r"asyncssh\.",
    )


def route_warnings_to_logging() -> None:
    """Send warnings to the `py.warnings` logger, formatted like every other log line."""
    logging.captureWarnings(True)

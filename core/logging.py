"""Logging set-up for the service (one place, called by the app factory)."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    """Send Herald's logs to stderr at ``level``; leaves other libraries' handlers alone."""
    herald = logging.getLogger("herald")
    herald.setLevel(level)
    if not herald.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        herald.addHandler(handler)
        herald.propagate = False

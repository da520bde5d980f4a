"""How big a drill is: short in ``make test`` (what CI can afford), full in ``make drills`` (HERALD_DRILLS=full)."""

from __future__ import annotations

import os

FULL = os.environ.get("HERALD_DRILLS", "short") == "full"


def drill_size(short: int, full: int) -> int:
    """``full`` under ``make drills``, else ``short``: the same drill, the same assertions, fewer items."""
    return full if FULL else short

"""The chart of a benchmark run: one bar per target, its acceptable range shaded, pass green and miss red."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from bench.report import Target

PASS_COLOUR, MISS_COLOUR, RANGE_COLOUR = "#2e7d32", "#c62828", "#a5d6a7"


def draw(targets: Sequence[Target], path: Path, subtitle: str) -> None:
    """Write a PNG with one row per target to ``path``."""
    # A bare Figure, not pyplot: no GUI backend and no global state, it only ever becomes a file.
    figure = Figure(figsize=(10, 0.75 * len(targets) + 1.4))
    axes = figure.subplots(len(targets), 1, squeeze=False)
    for ax, target in zip(axes[:, 0], targets, strict=True):
        bounds = [b for b in (target.low, target.high) if b is not None]
        right = max(target.measured, *bounds) * 1.3
        ax.axvspan(target.low or 0, target.high or right, color=RANGE_COLOUR, alpha=0.35, lw=0)
        for bound in bounds:
            ax.axvline(bound, color="#555555", lw=1, ls="--")
        ax.barh([0], [target.measured], height=0.6, color=PASS_COLOUR if target.passed else MISS_COLOUR)
        verdict = "pass" if target.passed else "miss"
        ax.text(target.measured, 0, f"  {target.measured:.2f}{target.unit} ({verdict}; goal {target.goal})",
                va="center", fontsize=8, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})  # fmt: skip
        ax.set_xlim(0, right)
        ax.set_yticks([0], [target.label], fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    figure.suptitle(f"Herald benchmarks: same-run ratios vs their targets\n{subtitle}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)

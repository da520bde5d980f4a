"""What a benchmark reports: a table, the command that made it, notes, and its targets as same-run ratios."""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import subprocess
from collections.abc import Coroutine
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tests.support.redis_server import redis_server_binary

TIMES, EN_DASH = "\N{MULTIPLICATION SIGN}", "\N{EN DASH}"


def times(value: float) -> str:
    """``value`` as a ratio for the tables, with the multiplication sign."""
    return f"{value:.2f}{TIMES}"


@dataclass(frozen=True)
class Target:
    """A measured ratio and the range issue 7 asks of it (``low`` and/or ``high``)."""

    label: str
    measured: float
    low: float | None = None
    high: float | None = None
    unit: str = TIMES

    @property
    def passed(self) -> bool:
        return (self.low is None or self.measured >= self.low) and (self.high is None or self.measured <= self.high)

    @property
    def goal(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{self.low:g}{EN_DASH}{self.high:g}{self.unit}"
        if self.low is not None:
            return f"≥ {self.low:g}{self.unit}"
        return f"≤ {self.high:g}{self.unit}"

    def row(self) -> list[str]:
        return [self.label, self.goal, f"{self.measured:.2f}{self.unit}", "pass" if self.passed else "**miss**"]


@dataclass
class Section:
    """One benchmark's results, rendered as a Markdown section."""

    title: str
    command: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    failed: bool = False

    def markdown(self, machine: str) -> str:
        """The section under a ``##`` heading, with the command and ``machine`` above its table."""
        lines = [f"## {self.title}", "", f"Command: `{self.command}`  ", f"Machine: {machine}", ""]
        lines += [*table(self.header, self.rows), ""]
        if self.targets:
            lines += [*table(["Target", "Goal", "Measured", ""], [t.row() for t in self.targets]), ""]
        lines += [note + "\n" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def machine_facts() -> str:
    """Cores, CPU, load, and the versions that shape the figures, on one line."""
    load_1m, load_5m, _ = os.getloadavg()
    parts = [
        f"{os.cpu_count()} cores ({cpu_model()}), load average {load_1m:.1f}/{load_5m:.1f} (1/5 min) at start",
        f"Python {platform.python_version()}",
        *(f"{name} {version(name)}" for name in ("arq", "redis", "uvicorn", "fastapi", "httpx")),
        f"redis-server {redis_server_version()}",
    ]
    return "; ".join(parts)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def redis_server_version() -> str:
    out = subprocess.run([redis_server_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    return next((p.removeprefix("v=") for p in out.split() if p.startswith("v=")), out.strip())


def percentile_ms(values_s: list[float], q: int) -> float:
    """The ``q``-th percentile of ``values_s`` (seconds), in milliseconds."""
    return statistics.quantiles(values_s, n=100, method="inclusive")[q - 1] * 1000


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def run_alone(measurement: Coroutine[Any, Any, Section]) -> None:
    """Run one benchmark and print its section, as run_all writes it (machine facts read before it starts)."""
    machine = machine_facts()
    print(asyncio.run(measurement).markdown(machine))

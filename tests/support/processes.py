"""Real Herald processes for drills (arq workers, `python -m api`): clean env, a log file each, killed at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
# What a child keeps from the environment running the suite; everything else comes from the test.
INHERITED = frozenset({"PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR"})
WORKER_COMMANDS: dict[str, list[str]] = {
    "arq-cli": [sys.executable, "-m", "arq", "tasks.worker.WorkerSettings"],
    "python-m": [sys.executable, "-m", "tasks.worker"],
}


def child_env(**values: str) -> dict[str, str]:
    """The inherited basics plus ``values``; Herald's settings come only from ``values``."""
    env = {name: value for name, value in os.environ.items() if name in INHERITED}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(values)
    return env


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send(self, signum: signal.Signals) -> None:
        self.popen.send_signal(signum)

    async def exited(self, *, timeout_s: float) -> int:
        """Wait (polling) until the process has exited; its return code."""
        await eventually(lambda: not self.running, timeout_s=timeout_s, what=f"{self.name} to exit")
        return self.popen.returncode

    def kill(self) -> None:
        if self.running:
            self.popen.kill()
        self.popen.wait(timeout=10)


class Processes:
    """Starts processes with ``cwd`` = the repository; ``close`` SIGKILLs whatever is still running."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._started: list[Process] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Process:
        log_path = self._log_dir / f"{name}-{len(self._started)}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        process = Process(name, popen, log_path)
        self._started.append(process)
        return process

    def close(self) -> None:
        for process in self._started:
            process.kill()
        self._started.clear()

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

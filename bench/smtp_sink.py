"""An SMTP server that accepts and counts every message, for benchmarks (aiosmtpd on 127.0.0.1).

    .venv/bin/python -m bench.smtp_sink --port 2525     # its own process, until SIGTERM/SIGINT

``bench.smtp_pool`` uses ``Counter`` in a thread of its own process instead.
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

from aiosmtpd.controller import Controller


class Counter:
    """An aiosmtpd handler: 250 for every message, which it counts and drops."""

    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received += 1
        return "250 OK"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # the controller's thread inherits the mask
    controller = Controller(Counter(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        signal.sigwait(stop_signals)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()

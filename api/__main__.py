"""``python -m api``: validate settings, then serve with uvicorn on HOST:PORT."""

from __future__ import annotations

import sys

import uvicorn

from api.app import create_app
from core.config import get_settings
from core.errors import ConfigError
from core.logging import configure_logging

# Open connections get this long to finish after SIGTERM; the job drain has its own
# SHUTDOWN_GRACE_S after that. Their sum must stay under the platform's SIGKILL (30 s).
HTTP_DRAIN_S = 5


def main() -> None:
    try:
        settings = get_settings()
    except ConfigError as exc:
        sys.stderr.write(f"herald: {exc}\n")
        raise SystemExit(2) from None
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    uvicorn.run(
        create_app(settings),
        host=settings.HOST,
        port=settings.PORT,
        timeout_graceful_shutdown=HTTP_DRAIN_S,
        log_level=settings.LOG_LEVEL.lower(),
        log_config=None,  # keep configure_logging's handler: no uvicorn formatter, JSON lines throughout
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()

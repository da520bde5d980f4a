"""``python -m api``: validate settings, then serve with uvicorn on HOST:PORT.

An application that adds its own TaskSets and routes serves itself the same way: ``serve(build)``
with its own ``build(settings) -> FastAPI`` (see examples/reports/).
"""

from __future__ import annotations

import gc
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.inbox_deps import end_streams
from core.config import Settings, get_settings
from core.errors import ConfigError
from core.logging import configure_logging

# Open connections get this long to finish after SIGTERM; the job drain has its own
# SHUTDOWN_GRACE_S after that. Their sum must stay under the platform's SIGKILL (30 s).
HTTP_DRAIN_S = 5


def serve(build: Callable[[Settings], FastAPI]) -> None:
    """Read settings from the environment (exit 2 naming the bad variable), then serve ``build(settings)``."""
    try:
        settings = get_settings()
        app = build(settings)
    except ConfigError as exc:
        sys.stderr.write(f"herald: {exc}\n")
        raise SystemExit(2) from None
    configure_logging(settings.LOG_LEVEL, settings.LOG_FORMAT)
    freeze_startup_objects()
    HeraldServer(uvicorn.Config(app, **uvicorn_options(settings)), app).run()


class HeraldServer(uvicorn.Server):
    """uvicorn, ending the app's open event streams as soon as shutdown begins.

    uvicorn waits for open responses (up to ``timeout_graceful_shutdown``) before the lifespan's shutdown; an
    inbox stream never finishes by itself, so without this every deploy with a browser connected would wait
    the whole HTTP_DRAIN_S and then cancel it.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        end_streams(self._app)
        await super().shutdown(sockets)


def freeze_startup_objects() -> None:
    """Keep the garbage collector's full collections off what start-up built, which lives as long as the process.

    The modules, routes, schemas and validators are some 100,000 objects; without this every full collection
    walks them all again. Under load (50 connections, arq mode) full collections came every second or so and
    each paused every request in flight for 30-50 ms, the whole p99 of POST /notify; after it, about 1 ms.
    A collection first, so that start-up's own garbage is not kept.
    """
    gc.collect()
    gc.freeze()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How ``serve`` runs uvicorn: loop and HTTP parser ``auto`` (uvloop and httptools, from uvicorn[standard]).

    At ``LOG_LEVEL`` WARNING or ERROR the access log is switched off rather than filtered: uvicorn formats each
    request's path (``urllib.parse.quote``) before the logger drops the line, a few percent of a request's CPU.
    """
    return {
        "host": settings.HOST,
        "port": settings.PORT,
        "timeout_graceful_shutdown": HTTP_DRAIN_S,
        "log_level": settings.LOG_LEVEL.lower(),
        "log_config": None,  # keep configure_logging's handler: no uvicorn formatter, JSON lines throughout
        "access_log": logging.getLevelName(settings.LOG_LEVEL) <= logging.INFO,
        "proxy_headers": True,
    }


def main() -> None:
    serve(create_app)


if __name__ == "__main__":
    main()

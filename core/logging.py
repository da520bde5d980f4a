"""Logging for the service: one handler on the root logger, JSON lines or a console format, context fields.

Every line carries the fields of the context it was logged in, copied onto the record by
:class:`ContextFilter`:

- :func:`log_context` binds fields for a block (the HTTP middleware binds ``request_id`` for a request);
- :func:`begin_attempt_log` starts the fields of one job attempt (``run_attempt`` binds ``job_id``, ``task``,
  ``attempt``) and :func:`bind_log_fields` adds to them (a task binds the ids it reads from its arguments).
  They last until the next attempt begins in the same asyncio task, or that task ends, so the runner's
  outcome line, logged after the task returned, still carries what the task bound.

Fields passed as ``extra=`` win over context fields of the same name.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Literal, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["json", "console"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_scoped: ContextVar[Mapping[str, Any]] = ContextVar("herald_log_scoped", default=_EMPTY)
_attempt: ContextVar[Mapping[str, Any]] = ContextVar("herald_log_attempt", default=_EMPTY)

# Loggers that take Herald's level and write through its handler; uvicorn's LOGGING_CONFIG and arq's CLI
# give some of them handlers of their own, removed here so each line is written once, in one format.
SERVICE_LOGGERS = ("herald", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "arq")
# At INFO httpx logs every request's URL, and a webhook URL can carry a token.
QUIET_LOGGERS = ("httpx", "httpcore")
# uvicorn adds an ANSI-coloured copy of some messages; it is not a field.
_NOT_FIELDS = frozenset({*RESERVED_ATTRS, "color_message"})
# arq logs each job start as `→ id:function(<first 80 characters of repr(args)>)`: Herald's argument is the
# delivery payload, and which of its keys fit in 80 characters (ids, or the address and body) depends on key
# order and id length. Herald's own job lines carry the ids as fields, so the arguments are dropped.
_ARQ_JOB_START = "%6.2fs → %s(%s)%s"
_ARGS_DROPPED = "…"


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every line logged inside the block (and in tasks started inside it)."""
    token = _scoped.set({**_scoped.get(), **fields})
    try:
        yield
    finally:
        _scoped.reset(token)


def begin_attempt_log(**fields: Any) -> None:
    """Start the fields of one job attempt in the current asyncio task, replacing the previous attempt's."""
    _attempt.set(dict(fields))


def bind_log_fields(**fields: Any) -> None:
    """Add ``fields`` to the current attempt's lines (outside an attempt: to the rest of this asyncio task)."""
    _attempt.set({**_attempt.get(), **fields})


def log_fields() -> dict[str, Any]:
    """The fields the current context adds to each line."""
    return {**_scoped.get(), **_attempt.get()}


class ContextFilter(logging.Filter):
    """Copies the context's fields onto each record that passes (put it on a handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in log_fields().items():
            if name not in record.__dict__:
                setattr(record, name, value)
        return True


class ArqArgsFilter(logging.Filter):
    """Drops the job arguments from arq's job-start line (see ``_ARQ_JOB_START``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _ARQ_JOB_START and isinstance(record.args, tuple) and len(record.args) == 4:
            elapsed, ref, _, extra = record.args
            record.args = (elapsed, ref, _ARGS_DROPPED, extra)
        return True


class ConsoleFormatter(logging.Formatter):
    """``time level logger: message`` then the record's fields as ``key=value``, for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(
            f"{name}={value}"
            for name, value in record.__dict__.items()
            if name not in _NOT_FIELDS and not name.startswith("_")
        )
        if not fields:
            return line
        first, newline, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{first} [{fields}]{newline}{rest}"


def json_formatter() -> logging.Formatter:
    """One JSON object per line: ``level``, ``logger``, ``message``, the record's fields, ``timestamp`` (UTC)."""
    return JsonFormatter(
        ["levelname", "name", "message"],
        rename_fields={"levelname": "level", "name": "logger"},
        reserved_attrs=sorted(_NOT_FIELDS),
        timestamp=True,
        json_ensure_ascii=False,
    )


class _HeraldHandler(logging.StreamHandler[TextIO]):
    """Marks the handler configure_logging installed, so that calling it again replaces it."""


def configure_logging(level: str, fmt: LogFormat = "json", *, stream: TextIO | None = None) -> None:
    """Log to ``stream`` (stderr) through one root handler, as JSON lines or in the console format.

    Herald's, uvicorn's and arq's loggers log at ``level`` through that handler; every other library at
    WARNING and up (at DEBUG some print request details). Python warnings are logged too. Safe to call
    again: the handler is replaced, not added twice.
    """
    handler = _HeraldHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _HeraldHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, logging.getLevelName(level)))
    for name in SERVICE_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    arq_worker = logging.getLogger("arq.worker")
    if not any(isinstance(f, ArqArgsFilter) for f in arq_worker.filters):
        arq_worker.addFilter(ArqArgsFilter())
    logging.captureWarnings(True)

"""The one place where errors become HTTP status codes and bodies a client can act on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from core.errors import (
    BackendUnavailableError,
    DuplicateJobError,
    NotCancellableError,
    NotRetryableError,
    QueueClosedError,
    QueueFullError,
    UnknownJobError,
)
from tasks.notifications import IdempotencyConflictError
from tasks.preferences import PreferencesFullError
from tasks.rendering import TemplateProblem

RETRY_AFTER_FULL_S = 5
RETRY_AFTER_CLOSED_S = 10


def invalid(loc: Sequence[str | int], msg: str, kind: str = "value_error") -> RequestValidationError:
    """A 422 in the same shape as FastAPI's own validation errors."""
    return RequestValidationError([{"loc": tuple(loc), "msg": msg, "type": kind}])


def _clean(error: dict[str, Any]) -> dict[str, Any]:
    # FastAPI echoes the offending input and pydantic internals; a client needs where and what.
    return {"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": [_clean(e) for e in exc.errors()]})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    cause = exc.__cause__
    # FastAPI answers a JSON body it cannot even decode with a bare 400 "There was an error parsing the body";
    # undecodable JSON is a 422 like any other (FastAPI's own for malformed JSON), saying what is wrong.
    if exc.status_code == 400 and isinstance(cause, UnicodeDecodeError | RecursionError):
        problem = "is not UTF-8" if isinstance(cause, UnicodeDecodeError) else "is nested too deeply"
        return await _validation_error(
            request, invalid(["body"], f"the body is not valid JSON: it {problem}", "json_invalid")
        )
    return await http_exception_handler(request, exc)


async def _template_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TemplateProblem)
    return JSONResponse(
        status_code=422, content={"detail": [{"loc": ["body", exc.field], "msg": str(exc), "type": "template_error"}]}
    )


async def _idempotency_conflict(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=409, content={"detail": str(exc)})


async def _queue_full(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        status_code=503,
        content={"detail": f"too many deliveries waiting, try again shortly ({exc})"},
        headers={"Retry-After": str(RETRY_AFTER_FULL_S)},
    )


async def _queue_closed(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(
        status_code=503, content={"detail": str(exc)}, headers={"Retry-After": str(RETRY_AFTER_CLOSED_S)}
    )


async def _backend_unavailable(request: Request, exc: Exception) -> JSONResponse:
    done = {"GET": "", "HEAD": "", "POST": "; nothing was stored"}.get(request.method, "; nothing was changed")
    return JSONResponse(
        status_code=503,
        content={"detail": f"{exc}{done}, try again shortly"},
        headers={"Retry-After": str(RETRY_AFTER_CLOSED_S)},
    )


async def _preferences_full(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=507, content={"detail": f"{exc}; nothing was changed"})


async def _not_retryable(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=409, content={"detail": str(exc)})


async def _unknown_job(_: Request, exc: Exception) -> JSONResponse:
    job_id = exc.args[0] if exc.args else ""  # UnknownJobError(job_id)
    return JSONResponse(
        status_code=404,
        content={"detail": f"no job, chain or group with id {job_id!r} (never existed, or no longer kept)"},
    )


async def _not_cancellable(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=409, content={"detail": str(exc)})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(UnknownJobError, _unknown_job)
    app.add_exception_handler(NotCancellableError, _not_cancellable)
    app.add_exception_handler(NotRetryableError, _not_retryable)
    app.add_exception_handler(DuplicateJobError, _not_retryable)
    app.add_exception_handler(BackendUnavailableError, _backend_unavailable)
    app.add_exception_handler(PreferencesFullError, _preferences_full)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(TemplateProblem, _template_problem)
    app.add_exception_handler(IdempotencyConflictError, _idempotency_conflict)
    app.add_exception_handler(QueueFullError, _queue_full)
    app.add_exception_handler(QueueClosedError, _queue_closed)

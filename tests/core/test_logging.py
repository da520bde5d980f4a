"""configure_logging: one handler, JSON lines or console, context fields, library loggers brought in line."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import logging
import logging.config
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from arq.logs import default_log_config
from uvicorn.config import LOGGING_CONFIG

from core.errors import PermanentError
from core.inline import InlineBackend
from core.jobs import JobContext, JobSpec, JobState
from core.logging import (
    QUIET_LOGGERS,
    SERVICE_LOGGERS,
    begin_attempt_log,
    bind_log_fields,
    configure_logging,
    log_context,
)
from core.registry import TaskRegistry
from core.retry import RetryPolicy
from core.store import MemoryJobStore
from tests.support.waiting import eventually

TOUCHED = (*SERVICE_LOGGERS, *QUIET_LOGGERS, "arq.worker")
ONE_TRY = RetryPolicy(max_attempts=1, timeout_s=5.0, base_delay_s=0.01, max_delay_s=0.05)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put back what it changes."""
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    saved = {
        name: (logger.level, list(logger.handlers), logger.propagate, list(logger.filters))
        for name in TOUCHED
        for logger in [logging.getLogger(name)]
    }
    yield
    logging.captureWarnings(False)
    for handler in root.handlers:
        if handler not in saved_root[1]:
            handler.close()
    root.setLevel(saved_root[0])
    root.handlers[:] = saved_root[1]
    for name, (level, handlers, propagate, filters) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.filters[:] = filters


@pytest.fixture
def json_lines(restore_logging: None) -> Callable[[], list[dict[str, Any]]]:
    """Configure JSON logging into a buffer; call the result to parse every line written so far."""
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)

    def lines() -> list[dict[str, Any]]:
        parsed = []
        for line in stream.getvalue().splitlines():
            record = json.loads(line)  # every line is one JSON object
            assert isinstance(record, dict), line
            parsed.append(record)
        return parsed

    return lines


def test_a_json_line_has_level_logger_message_timestamp_and_extras(json_lines: Callable[[], list[Any]]) -> None:
    logging.getLogger("herald.test").warning("disk %s", "full", extra={"outcome": "failed", "duration_s": 0.25})
    [line] = json_lines()
    assert line.pop("timestamp").endswith("+00:00")
    assert line == {
        "level": "WARNING",
        "logger": "herald.test",
        "message": "disk full",
        "outcome": "failed",
        "duration_s": 0.25,
    }


async def test_context_fields_reach_every_line_and_extra_wins(json_lines: Callable[[], list[Any]]) -> None:
    log = logging.getLogger("herald.test")
    with log_context(request_id="req-1"):
        begin_attempt_log(job_id="job-1", attempt=1)
        bind_log_fields(channel="email")
        log.info("inside")
        log.info("explicit", extra={"attempt": 7})
        logging.getLogger("some.library").warning("library line")
    log.info("after the block")
    begin_attempt_log(job_id="job-2", attempt=1)
    log.info("next attempt")

    async def other_attempt() -> None:
        begin_attempt_log(job_id="in-another-task")

    await asyncio.create_task(other_attempt())
    log.info("back in this task")
    inside, explicit, library, after, following, back = json_lines()
    assert (inside["request_id"], inside["job_id"], inside["attempt"], inside["channel"]) == (
        "req-1",
        "job-1",
        1,
        "email",
    )
    assert explicit["attempt"] == 7
    assert library["request_id"] == "req-1", "the filter is on the handler: every logger's lines get the fields"
    assert "request_id" not in after, "a log_context ends with its block"
    assert after["job_id"] == "job-1", "attempt fields last until the next attempt begins"
    assert following["job_id"] == "job-2"
    assert "channel" not in following, "a new attempt starts with none of the previous attempt's fields"
    assert back["job_id"] == "job-2", "an attempt's fields stay in its own asyncio task"


async def test_job_lines_carry_the_attempt_and_what_the_task_bound(json_lines: Callable[[], list[Any]]) -> None:
    async def tagged(ctx: JobContext, tag: str) -> None:
        bind_log_fields(tag=tag)
        logging.getLogger("herald.test").info("inside tagged")

    async def plain(ctx: JobContext) -> None:
        logging.getLogger("herald.test").info("inside plain")
        raise PermanentError("refused")

    registry = TaskRegistry()
    registry.register(tagged, policy=ONE_TRY)
    registry.register(plain, policy=ONE_TRY)
    store = MemoryJobStore(max_finished=10, ttl_s=60)
    backend = InlineBackend(registry, store, {}, concurrency=1, max_unfinished=10)  # one worker runs both jobs
    await backend.start()
    try:
        await backend.enqueue([JobSpec("tagged", "job-a", args=("a",)), JobSpec("plain", "job-b")])

        async def finished() -> bool:
            records = [await store.get(job_id) for job_id in ("job-a", "job-b")]
            return all(r is not None and r.state.is_terminal for r in records)

        await eventually(finished, what="both jobs to finish")
    finally:
        await backend.stop(0.5)
    inside_a, done_a, inside_b, done_b = json_lines()
    assert inside_a["message"] == "inside tagged"
    assert (inside_a["job_id"], inside_a["task"], inside_a["attempt"], inside_a["tag"]) == ("job-a", "tagged", 1, "a")
    assert done_a["message"].startswith("job job-a succeeded in ")
    assert (done_a["outcome"], done_a["tag"], done_a["attempt"]) == ("succeeded", "a", 1)
    assert isinstance(done_a["duration_s"], float)
    assert (inside_b["message"], done_b["message"]) == ("inside plain", "job job-b failed: refused")
    assert inside_b["job_id"] == done_b["job_id"] == "job-b"
    assert (done_b["outcome"], done_b["level"]) == (JobState.FAILED.value, "WARNING")
    assert "tag" not in inside_b, "job-a's fields must not leak into job-b's lines"
    assert "tag" not in done_b


def test_uvicorn_and_arq_loggers_write_once_through_herald_handler(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # What `uvicorn.run` (default log_config) and arq's CLI install before Herald configures logging.
    logging.config.dictConfig(copy.deepcopy(LOGGING_CONFIG))
    logging.config.dictConfig(default_log_config(verbose=False))
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    logging.getLogger("uvicorn.error").info("Started", extra={"color_message": "\x1b[1mStarted\x1b[0m"})
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/healthz", "1.1", 200)
    logging.getLogger("arq.worker").info("Starting worker for %d functions: %s", 1, "send_email")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [
        ("uvicorn.error", "Started"),
        ("uvicorn.access", '127.0.0.1:1 - "GET /healthz HTTP/1.1" 200'),
        ("arq.worker", "Starting worker for 1 functions: send_email"),
    ]
    assert "color_message" not in lines[0]
    assert capsys.readouterr() == ("", ""), "uvicorn's and arq's own handlers (on stdout/stderr) must be gone"


def test_arq_job_start_line_shows_no_arguments(json_lines: Callable[[], list[Any]]) -> None:
    # arq 0.28's own call (arq/worker.py run_job), with a payload as Herald enqueues it.
    payload = {"delivery_id": "d", "notification_id": "n", "channel": "email", "address": "a@b.c", "text": "secret"}
    logging.getLogger("arq.worker").info("%6.2fs → %s(%s)%s", 0.01, "d:send_email", repr(payload), " try=2")
    [line] = json_lines()
    assert line["message"] == "  0.01s → d:send_email(…) try=2"


async def test_httpx_request_urls_are_not_logged(json_lines: Callable[[], list[Any]]) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(204))
    async with httpx.AsyncClient(transport=transport) as client:
        await client.post("https://hooks.example.com/in?token=url-secret")
    assert json_lines() == []


def test_python_warnings_become_json_lines(json_lines: Callable[[], list[Any]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("careful", UserWarning, stacklevel=1)
    [line] = json_lines()
    assert (line["logger"], line["level"]) == ("py.warnings", "WARNING")
    assert "careful" in line["message"]


def test_other_libraries_log_from_warning_up(json_lines: Callable[[], list[Any]]) -> None:
    logging.getLogger("some.library").info("chatter")
    logging.getLogger("some.library").warning("worth knowing")
    logging.getLogger("herald.test").info("herald info")
    assert [line["message"] for line in json_lines()] == ["worth knowing", "herald info"]


def test_console_format_is_one_readable_line_with_fields(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", "console", stream=stream)
    with log_context(request_id="req-9"):
        logging.getLogger("herald.app").info("ready", extra={"outcome": "succeeded"})
    [line] = stream.getvalue().splitlines()
    assert line.endswith(" INFO    herald.app: ready [outcome=succeeded request_id=req-9]")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_configuring_twice_keeps_one_handler(restore_logging: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", "json", stream=first)
    configure_logging("INFO", "json", stream=second)
    logging.getLogger("herald.test").info("once")
    assert first.getvalue() == ""
    assert len(second.getvalue().splitlines()) == 1

"""Annotated dependencies: one override point per resource.

Each is ``async def`` though it never awaits: FastAPI runs a plain ``def`` dependency in its thread pool,
a thread hop (and a GIL hand-over) per dependency per request, which under load cost more than the
handler itself. tests/api/test_request_path.py keeps every endpoint's dependencies on the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from core.config import Settings
from core.cron import CronHistory
from core.queue import TaskQueue
from core.taskset import TaskSet
from tasks.notifications import NotificationService
from tasks.rendering import TemplateLibrary, default_library


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_notifications(request: Request) -> NotificationService:
    service: NotificationService = request.app.state.notifications
    return service


async def get_task_queue(request: Request) -> TaskQueue:
    queue: TaskQueue = request.app.state.tasks
    return queue


async def get_cron_history(request: Request) -> CronHistory:
    history: CronHistory = request.app.state.cron_history
    return history


async def get_task_sets(request: Request) -> list[TaskSet]:
    task_sets: list[TaskSet] = request.app.state.task_sets
    return task_sets


async def get_templates() -> TemplateLibrary:
    """The templates ``POST /notify`` renders: ``tasks/templates/``, compiled once per process."""
    return default_library()


SettingsDep = Annotated[Settings, Depends(get_settings)]
NotificationsDep = Annotated[NotificationService, Depends(get_notifications)]
TaskQueueDep = Annotated[TaskQueue, Depends(get_task_queue)]
CronHistoryDep = Annotated[CronHistory, Depends(get_cron_history)]
TaskSetsDep = Annotated[list[TaskSet], Depends(get_task_sets)]
TemplatesDep = Annotated[TemplateLibrary, Depends(get_templates)]

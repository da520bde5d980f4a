"""Annotated dependencies: one override point per resource."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from core.config import Settings
from tasks.notifications import NotificationService


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_notifications(request: Request) -> NotificationService:
    service: NotificationService = request.app.state.notifications
    return service


SettingsDep = Annotated[Settings, Depends(get_settings)]
NotificationsDep = Annotated[NotificationService, Depends(get_notifications)]

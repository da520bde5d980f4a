from __future__ import annotations

from fastapi import APIRouter

from api.deps import SettingsDep
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness check (no auth)")
async def healthz(settings: SettingsDep) -> Health:
    return Health(status="ok", backend=settings.TASK_BACKEND)

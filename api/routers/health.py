from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import SettingsDep
from api.schemas import Health, Readiness
from core.backend import TaskBackend

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness check (no auth)")
async def healthz(settings: SettingsDep) -> Health:
    return Health(status="ok", backend=settings.TASK_BACKEND)


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: the backend and what it depends on (no auth)",
    responses={503: {"model": Readiness, "description": "Not ready; `checks` says what is down"}},
)
async def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
    backend: TaskBackend = request.app.state.backend
    checks = await backend.readiness()
    ready = bool(checks.pop("ready"))
    body = Readiness(ready=ready, backend=settings.TASK_BACKEND, checks=checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)

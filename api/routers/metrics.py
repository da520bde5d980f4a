"""``GET /metrics``: this process's metrics in Prometheus' text format (OpenMetrics if the scraper asks).

The API key guards it like every other endpoint (Prometheus sends it with ``authorization:`` in its
scrape config) unless ``METRICS_PUBLIC=true``. In arq mode a separate worker process serves its own
metrics on ``WORKER_METRICS_PORT``; an embedded worker's show up here.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.params import Depends as DependsParam
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import choose_encoder

from api.auth import require_api_key
from api.schemas import ErrorOut
from core.config import Settings
from core.metrics import JobMetrics, QueueMetrics
from tasks.metrics import delivery_metrics

router = APIRouter(tags=["metrics"])


class WebMetrics:
    """The web process's own registry (one per app, so apps in one process never collide) and metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs: JobMetrics = delivery_metrics(self.registry)
        self.queue = QueueMetrics(self.registry)
        self.accepted = Counter(
            "herald_notifications_accepted",
            "Notifications accepted by POST /notify (an idempotent replay is not counted again).",
            registry=self.registry,
        )


async def get_metrics(request: Request) -> WebMetrics:
    metrics: WebMetrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[WebMetrics, Depends(get_metrics)]


def access(settings: Settings) -> list[DependsParam]:
    """The dependencies guarding this router: the API key, unless METRICS_PUBLIC."""
    return [] if settings.METRICS_PUBLIC else [Depends(require_api_key)]


_TEXT: dict[str, Any] = {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "The metrics"}


@router.get(
    "/metrics",
    summary="Prometheus metrics of this process",
    response_class=Response,
    responses={200: _TEXT, 401: {"model": ErrorOut, "description": "Missing or wrong API key"}},
)
async def metrics(request: Request, state: MetricsDep) -> Response:
    await state.queue.refresh()
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(state.registry), media_type=content_type)

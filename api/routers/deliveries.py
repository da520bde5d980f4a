from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status

from api.auth import require_api_key
from api.deps import NotificationsDep
from api.schemas import DeliveryItemOut, DeliveryPageOut, ErrorOut
from tasks.messages import Channel
from tasks.notifications import DeliveryStatus, UnknownDeliveryError

router = APIRouter(tags=["deliveries"], dependencies=[Depends(require_api_key)])

_401: dict[int | str, dict[str, Any]] = {401: {"model": ErrorOut, "description": "Missing or wrong API key"}}
_503_REDIS: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorOut, "description": "Redis is unavailable (arq mode); see Retry-After"}
}


@router.get(
    "/deliveries",
    response_model=DeliveryPageOut,
    summary="Deliveries newest first, e.g. the failed ones of one channel",
    responses={**_401, **_503_REDIS},
)
async def list_deliveries(
    service: NotificationsDep,
    status_: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    channel: Channel | None = None,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,16}\.[A-Za-z0-9_:-]{1,128}$", description="`next_cursor` of the last page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeliveryPageOut:
    page = await service.list_deliveries(status=status_, channel=channel, cursor=cursor, limit=limit)
    return DeliveryPageOut(items=[DeliveryItemOut.of_item(i) for i in page.items], next_cursor=page.next_cursor)


@router.get(
    "/deliveries/counts",
    response_model=dict[DeliveryStatus, int],
    summary="How many deliveries are in each status (records kept for RECORD_TTL_S)",
    responses={**_401, **_503_REDIS},
)
async def count_deliveries(service: NotificationsDep) -> dict[DeliveryStatus, int]:
    return await service.counts()


@router.post(
    "/deliveries/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeliveryItemOut,
    summary="Send a failed delivery again: a new attempt series, same webhook-id / Message-ID",
    responses={
        **_401,
        404: {"model": ErrorOut, "description": "Unknown (or no longer kept) id"},
        409: {"model": ErrorOut, "description": "The delivery is not failed"},
        503: {"model": ErrorOut, "description": "Queue full or shutting down, or Redis unavailable; see Retry-After"},
    },
)
async def retry_delivery(delivery_id: str, service: NotificationsDep) -> DeliveryItemOut:
    try:
        item = await service.retry_delivery(delivery_id)
    except UnknownDeliveryError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no delivery with id {delivery_id!r}") from None
    return DeliveryItemOut.of_item(item)

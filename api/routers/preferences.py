"""``/users/{user_id}/preferences``: what a user opted out of, checked by every delivery made for them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from api.auth import require_api_key
from api.deps import TemplatesDep
from api.errors import invalid
from api.inbox_deps import UserIdDep
from api.preferences_schemas import PreferencesIn, PreferencesOut
from api.schemas import ErrorOut, ValidationErrorOut
from tasks.preferences import PreferenceStore
from tasks.rendering import TemplateLibrary

router = APIRouter(prefix="/users/{user_id}/preferences", tags=["preferences"], dependencies=[Depends(require_api_key)])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong API key"},
    503: {"model": ErrorOut, "description": "Redis is unavailable; retry later"},
}


async def get_store(request: Request) -> PreferenceStore:
    store: PreferenceStore = request.app.state.preferences
    return store


PreferencesDep = Annotated[PreferenceStore, Depends(get_store)]


@router.get(
    "",
    response_model=PreferencesOut,
    summary="A user's notification preferences (nothing opted out until they are set)",
    responses={**_RESPONSES, 422: {"model": ValidationErrorOut, "description": "Invalid user id"}},
)
async def get_preferences(user_id: UserIdDep, store: PreferencesDep) -> PreferencesOut:
    return PreferencesOut.of(user_id, await store.get(user_id))


@router.put(
    "",
    response_model=PreferencesOut,
    summary="Replace what a user opted out of; checked just before each of their deliveries is sent",
    responses={
        **_RESPONSES,
        422: {
            "model": ValidationErrorOut,
            "description": "Invalid user id, unknown channel, template or category, or a critical template",
        },
        413: {"model": ErrorOut, "description": "Body larger than MAX_BODY_BYTES"},
        507: {"model": ErrorOut, "description": "In-process mode: PREFERENCES_MAX_USERS users already have some"},
    },
)
async def put_preferences(
    user_id: UserIdDep, body: PreferencesIn, store: PreferencesDep, templates: TemplatesDep
) -> PreferencesOut:
    _check_names(body, templates)
    return PreferencesOut.of(user_id, await store.put(user_id, body.to_preferences()))


def _check_names(body: PreferencesIn, templates: TemplateLibrary) -> None:
    """Unknown names would be kept and never match (a typo that opts out of nothing); say so instead."""
    for name in body.templates:
        if not templates.exists(name):
            raise invalid(["body", "templates", name], f"no template {name!r}; known: {', '.join(templates.names())}")
        if templates.info(name).critical and body.templates[name] is not True:
            raise invalid(
                ["body", "templates", name],
                f"template {name!r} is critical: it is sent whatever the preferences say, so it cannot be opted out of",
            )
    categories = templates.categories()
    for name in body.categories:
        if name not in categories:
            known = ", ".join(sorted(categories)) or "none"
            raise invalid(["body", "categories", name], f"no template has category {name!r}; known: {known}")

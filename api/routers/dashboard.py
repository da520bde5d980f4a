"""The operator's dashboard: server-rendered HTML, live by polling a fragment, behind the API key.

Pages redirect to the login form without a session; the fragment and every POST answer 401. Each
POST also needs the session's CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``) and,
when the browser sends one, a same-origin ``Origin``/``Referer``. See api/dashboard_auth.py.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from api.dashboard_auth import COOKIE_NAME, SESSION_TTL_S, SessionKeys, same_origin
from api.deps import NotificationsDep, SettingsDep
from core.errors import EnqueueError
from core.rerun import NotRetryableError
from tasks.notifications import DeliveryStatus, NotificationService, UnknownDeliveryError

_HERE = Path(__file__).resolve().parent.parent
STATIC_DIR = _HERE / "static"
FAILED_PAGE_SIZE = 50
RECENT_COUNT = 20
POLL_INTERVAL_MS = 2000
_MAX_FORM_FIELDS = 10

# No inline script or style anywhere, so the policy can forbid both: injected markup stays inert.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# What a form POST without JavaScript is redirected to show: fixed codes, never text from the URL.
NOTICES = {
    "retried": ("ok", "Queued again."),
    "not-retryable": ("error", "Not retried: only failed deliveries can be retried."),
    "unknown": ("error", "Not retried: no such delivery or notification is kept any more."),
    "unavailable": ("error", "Not retried: the queue is full or unavailable; try again shortly."),
}


class _DashboardRoute(APIRoute):
    """Adds the security headers to every response a dashboard handler returns."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_headers(request: Request) -> Response:
            response = await handler(request)
            response.headers.update(_SECURITY_HEADERS)
            return response

        return with_headers


router = APIRouter(prefix="/dashboard", tags=["dashboard"], include_in_schema=False, route_class=_DashboardRoute)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "-"


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=_HERE / "templates")
    templates.env.filters["when"] = _when
    templates.env.filters["segment"] = lambda value: quote(str(value), safe="")
    return templates


_TEMPLATES = _templates()


def static_files() -> StaticFiles:
    """The dashboard's CSS and JavaScript, for ``app.mount("/static/dashboard", ...)``."""
    return StaticFiles(directory=STATIC_DIR)


@dataclass(frozen=True, slots=True)
class Session:
    cookie: str
    csrf_token: str


def _keys(request: Request) -> SessionKeys:
    settings = request.app.state.settings
    if settings.API_KEY is not None:
        return SessionKeys.derive(settings.API_KEY.get_secret_value().encode())
    keys: SessionKeys | None = getattr(request.app.state, "dashboard_keys", None)
    if keys is None:  # open mode: sessions signed by a secret that lives as long as this app
        keys = request.app.state.dashboard_keys = SessionKeys.ephemeral()
    return keys


def _session(request: Request) -> Session | None:
    keys = _keys(request)
    cookie = request.cookies.get(COOKIE_NAME)
    if cookie is None or not keys.verify(cookie):
        return None
    return Session(cookie, keys.csrf_token(cookie))


def _new_session(request: Request) -> Session:
    keys = _keys(request)
    cookie = keys.issue()
    return Session(cookie, keys.csrf_token(cookie))


def _set_cookie(request: Request, response: Response, session: Session) -> None:
    response.set_cookie(
        COOKIE_NAME,
        session.cookie,
        max_age=SESSION_TTL_S,
        path=_base(request),
        secure=_over_https(request),
        httponly=True,
        samesite="strict",
    )


def _over_https(request: Request) -> bool:
    # Behind a TLS-terminating proxy uvicorn does not trust, the scheme says http; the browser's own
    # Origin or the proxy's header still tell. A client spoofing either only loses its own cookie.
    forwarded = request.headers.get("x-forwarded-proto", "").partition(",")[0].strip().lower()
    origin = request.headers.get("origin", "")
    return request.url.scheme == "https" or forwarded == "https" or origin.startswith("https://")


def _base(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{router.prefix}"


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _check_origin(request: Request) -> None:
    if not same_origin(_own_origin(request), request.headers.get("origin"), request.headers.get("referer")):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-origin request refused")


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded body's fields (first value of each); empty for any other content type."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return {}
    try:
        fields = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=_MAX_FORM_FIELDS)
    except ValueError:
        return {}
    return {name: values[0] for name, values in fields.items()}


async def require_csrf(request: Request) -> Session:
    """Every dashboard POST: same origin if the browser says, a valid session (401), its CSRF token (403)."""
    _check_origin(request)
    session = _session(request)
    if session is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not logged in to the dashboard: open /dashboard/login")
    token = request.headers.get("x-csrf-token") or (await _form(request)).get("csrf_token")
    if not _keys(request).csrf_ok(session.cookie, token):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token: reload the dashboard")
    return session


CsrfSession = Annotated[Session, Depends(require_csrf)]
FailedCursor = Annotated[str | None, Query(max_length=200)]  # opaque: the service's next_cursor


async def _live(request: Request, service: NotificationService, session: Session, cursor: str | None) -> dict[str, Any]:
    counts = await service.counts()
    failed = await service.list_deliveries(status=DeliveryStatus.FAILED, cursor=cursor, limit=FAILED_PAGE_SIZE)
    recent = await service.recent(limit=RECENT_COUNT)
    return {
        "base": _base(request),
        "csrf_token": session.csrf_token,
        "counts": [(s.value, counts.get(s, 0)) for s in DeliveryStatus],
        "total": sum(counts.values()),
        "failed": failed,
        "failed_cursor": cursor,
        "recent": recent,
    }


@router.get("", response_class=HTMLResponse)
async def dashboard_page(
    request: Request,
    service: NotificationsDep,
    settings: SettingsDep,
    failed_cursor: FailedCursor = None,
    notice: str | None = None,
) -> Response:
    session = _session(request)
    if session is None and settings.API_KEY is not None:
        return RedirectResponse(f"{_base(request)}/login", status.HTTP_303_SEE_OTHER)
    fresh = session is None
    if session is None:  # open mode hands a session to anyone: it exists only to carry a CSRF token
        session = _new_session(request)
    context = await _live(request, service, session, failed_cursor)
    context.update(
        open_mode=settings.API_KEY is None,
        notice=NOTICES.get(notice or ""),
        poll_interval_ms=POLL_INTERVAL_MS,
    )
    page = _TEMPLATES.TemplateResponse(request, "dashboard.html", context)
    if fresh:
        _set_cookie(request, page, session)
    return page


@router.get("/fragment", response_class=HTMLResponse)
async def dashboard_fragment(
    request: Request, service: NotificationsDep, failed_cursor: FailedCursor = None
) -> Response:
    """The live part of the page, polled by dashboard.js."""
    session = _session(request)
    if session is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not logged in to the dashboard: open /dashboard/login")
    return _TEMPLATES.TemplateResponse(request, "_live.html", await _live(request, service, session, failed_cursor))


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, settings: SettingsDep) -> Response:
    if settings.API_KEY is None or _session(request) is not None:
        return RedirectResponse(_base(request), status.HTTP_303_SEE_OTHER)
    return _TEMPLATES.TemplateResponse(request, "login.html", {"base": _base(request), "error": None})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, settings: SettingsDep) -> Response:
    _check_origin(request)
    if settings.API_KEY is None:
        return RedirectResponse(_base(request), status.HTTP_303_SEE_OTHER)
    given = (await _form(request)).get("api_key", "").encode()
    if not hmac.compare_digest(given, settings.API_KEY.get_secret_value().encode()):
        return _TEMPLATES.TemplateResponse(
            request,
            "login.html",
            {"base": _base(request), "error": "That is not the API key."},
            status_code=status.HTTP_401_UNAUTHORIZED,
        )
    response = RedirectResponse(_base(request), status.HTTP_303_SEE_OTHER)
    _set_cookie(request, response, _new_session(request))
    return response


@router.post("/logout")
async def logout(request: Request, settings: SettingsDep, _: CsrfSession) -> Response:
    target = _base(request) if settings.API_KEY is None else f"{_base(request)}/login"
    response = RedirectResponse(target, status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE_NAME, path=_base(request), httponly=True, samesite="strict")
    return response


@router.post("/deliveries/{delivery_id}/retry")
async def retry_delivery(request: Request, delivery_id: str, service: NotificationsDep, _: CsrfSession) -> Response:
    try:
        item = await service.retry_delivery(delivery_id)
    except UnknownDeliveryError:
        return _outcome(request, "unknown", status.HTTP_404_NOT_FOUND, f"no delivery {delivery_id} is kept")
    except NotRetryableError as exc:
        return _outcome(request, "not-retryable", status.HTTP_409_CONFLICT, str(exc))
    except EnqueueError as exc:
        return _outcome(request, "unavailable", status.HTTP_503_SERVICE_UNAVAILABLE, str(exc))
    return _outcome(request, "retried", status.HTTP_200_OK, f"delivery {item.delivery.id} is {item.delivery.status}")


@router.post("/notifications/{notification_id}/retry")
async def retry_notification(
    request: Request, notification_id: str, service: NotificationsDep, _: CsrfSession
) -> Response:
    before = await service.get(notification_id)
    if before is None:
        return _outcome(request, "unknown", status.HTTP_404_NOT_FOUND, f"no notification {notification_id} is kept")
    if not any(d.status is DeliveryStatus.FAILED for d in before.deliveries):
        return _outcome(request, "not-retryable", status.HTTP_409_CONFLICT, "it has no failed deliveries")
    try:
        view = await service.retry_notification(notification_id)
    except NotRetryableError as exc:
        return _outcome(request, "not-retryable", status.HTTP_409_CONFLICT, str(exc))
    except EnqueueError as exc:
        return _outcome(request, "unavailable", status.HTTP_503_SERVICE_UNAVAILABLE, str(exc))
    if view is None:
        return _outcome(request, "unknown", status.HTTP_404_NOT_FOUND, f"no notification {notification_id} is kept")
    return _outcome(request, "retried", status.HTTP_200_OK, f"failed deliveries of {view.id} queued again")


def _outcome(request: Request, notice: str, status_code: int, detail: str) -> Response:
    """JSON for dashboard.js (``Accept: application/json``); a redirect back for a plain form post."""
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"detail": detail, "notice": notice}, status_code=status_code)
    return RedirectResponse(f"{_base(request)}?notice={notice}", status.HTTP_303_SEE_OTHER)

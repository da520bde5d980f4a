"""The dashboard's browser session: a signed, expiring cookie and a CSRF token derived from it.

The cookie value is ``v1.<expires unix s>.<nonce>.<signature>``, the signature an HMAC-SHA256 of
everything before it under a key derived from API_KEY. Nothing is stored server-side: changing
API_KEY ends every session. The CSRF token is a second HMAC (under another derived key) of the
whole cookie value, so it is per session, cannot be computed without the key, and a page from
another origin can neither read it nor the cookie.

Without API_KEY the dashboard is open, but its POSTs still need a session and a CSRF token (an
open dashboard on localhost must not be drivable by any web page the operator visits); the key is
then a random secret held by this process, so sessions last until it restarts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

COOKIE_NAME = "herald_dashboard"
SESSION_TTL_S = 12 * 3600
_VERSION = "v1"
_NONCE_BYTES = 16


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _derive(secret: bytes, purpose: bytes) -> bytes:
    # Separate keys per purpose: a session signature is never valid as a CSRF token and vice versa.
    return hmac.new(secret, b"herald/dashboard/" + purpose, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The two keys derived from one secret (API_KEY, or a per-process random one)."""

    signing: bytes
    csrf: bytes

    @classmethod
    def derive(cls, secret: bytes) -> SessionKeys:
        return cls(signing=_derive(secret, b"session"), csrf=_derive(secret, b"csrf"))

    @classmethod
    def ephemeral(cls) -> SessionKeys:
        return cls.derive(secrets.token_bytes(32))

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.signing, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, *, now_s: float | None = None, ttl_s: int = SESSION_TTL_S) -> str:
        """A new session cookie value, valid for ``ttl_s`` from ``now_s`` (default: the clock)."""
        expires = int(now_s if now_s is not None else time.time()) + ttl_s
        payload = f"{_VERSION}.{expires}.{_b64(secrets.token_bytes(_NONCE_BYTES))}"
        return f"{payload}.{self._sign(payload)}"

    def verify(self, value: str | None, *, now_s: float | None = None) -> bool:
        """Whether ``value`` is a session cookie this key issued and that has not expired."""
        if not value or not value.isascii():
            return False
        payload, _, signature = value.rpartition(".")
        parts = payload.split(".")
        if len(parts) != 3 or parts[0] != _VERSION or not parts[1].isdigit():
            return False
        if not hmac.compare_digest(signature.encode("ascii"), self._sign(payload).encode("ascii")):
            return False
        return int(parts[1]) > (now_s if now_s is not None else time.time())

    def csrf_token(self, session: str) -> str:
        """The CSRF token of a (verified) session cookie value."""
        return _b64(hmac.new(self.csrf, session.encode("ascii"), hashlib.sha256).digest())

    def csrf_ok(self, session: str, token: str | None) -> bool:
        if not token or not token.isascii():
            return False
        return hmac.compare_digest(token.encode("ascii"), self.csrf_token(session).encode("ascii"))


def same_origin(own_origin: str, origin: str | None, referer: str | None) -> bool:
    """False when the request says it comes from another origin (``Origin``, else ``Referer``).

    Absent headers pass: the CSRF token is the real check, this one is defence in depth (and
    browsers send ``Origin`` on every cross-origin POST). ``https://`` + our host also passes when we
    see plain http: a TLS-terminating proxy that uvicorn does not trust (FORWARDED_ALLOW_IPS) hides
    the scheme, and the other way round (an http page posting to https) is still refused.
    """
    if origin is None and referer:
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    if origin is None:
        return True
    if own_origin.startswith("http://") and origin == "https://" + own_origin.removeprefix("http://"):
        return True
    return origin == own_origin  # "null" (sandboxed frames, some redirects) never matches

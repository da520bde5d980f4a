"""SMS through a provider's HTTP API in Twilio's Messages API format, over one shared SmsSender.

Checks the API makes before anything is queued, pure functions: :func:`e164_problem` / :func:`validate_e164`
(the recipient) and :func:`segments` / :func:`length_problem` (the body: too long is refused, never truncated).

One attempt is one ``POST {SMS_API_BASE_URL}/2010-04-01/Accounts/{SMS_ACCOUNT_SID}/Messages.json``, form-encoded
``To``, ``From`` (or ``MessagingServiceSid``) and ``Body``, with HTTP Basic auth ``SMS_ACCOUNT_SID:SMS_AUTH_TOKEN``.
A 2xx answer with the message's ``sid`` is success. Connection errors, timeouts, 408, 429 and 5xx are retried
(``Retry-After`` honoured); any other answer is final, with the provider's error code and message.

At least once: the Messages API takes no idempotency key. When a request went out but no answer came back
(a read timeout, a dropped connection), the provider may have sent the message, and the retry sends it again.
Each accepted message is logged with its delivery id and the provider's sid, so a duplicate can be traced.

Errors and log lines show phone numbers masked (``+1******4567``) and never the auth token.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx

from core.config import Settings
from core.errors import PermanentError, RetryableError
from tasks.channels.closing import AsyncClosing
from tasks.channels.webhook import parse_retry_after
from tasks.messages import DeliveryPayload

CHANNEL = "sms"
USER_AGENT = "Herald-SMS/1"
# Each segment is billed; Twilio refuses bodies over 1600 characters, and 10 segments (1530 GSM-7 or 670 UCS-2
# characters at most) stay under that.
MAX_SEGMENTS = 10
SENDER_CONNECTIONS = 50
PROVIDER_MESSAGE_CHARS = 300  # of the provider's error message, kept in ``last_error``

E164_MIN_DIGITS = 8
E164_MAX_DIGITS = 15

Encoding = Literal["GSM-7", "UCS-2"]

# GSM 03.38 (3GPP TS 23.038), default alphabet without ESC (0x1B), which only announces an extension character.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: ESC + one septet, so each costs 2.
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
SINGLE_SEGMENT_UNITS: dict[Encoding, int] = {"GSM-7": 160, "UCS-2": 70}
# A concatenated message's segments each give up room to the User Data Header (6 bytes).
CONCATENATED_SEGMENT_UNITS: dict[Encoding, int] = {"GSM-7": 153, "UCS-2": 67}

_DIGITS = frozenset("0123456789")  # not str.isdigit, which takes other scripts' digits and '²' too
_MESSAGING_SERVICE_SID = re.compile(r"MG[0-9a-fA-F]{32}")
_PLUS_NUMBER = re.compile(r"\+[0-9]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_WHITESPACE = re.compile(r"\s+")

logger = logging.getLogger("herald.sms")


def e164_problem(number: str) -> str | None:
    """What keeps ``number`` from being an E.164 phone number, or None when it is one.

    E.164: ``+``, then 8 to 15 digits of which the first (the country code's) is not 0; no spaces or
    punctuation. The text is meant for API clients and never repeats the number.
    """
    example = "e.g. +14155550123"
    if not number:
        return f"a phone number is required, in E.164 form ({example})"
    if not number.startswith("+"):
        return f"a phone number must start with '+' and its country code, in E.164 form ({example})"
    digits = number[1:]
    for position, char in enumerate(digits, start=2):
        if char not in _DIGITS:
            return (
                f"a phone number may hold only the digits 0-9 after '+', but character {position} is {char!r}; "
                f"write it without spaces or punctuation ({example})"
            )
    if digits.startswith("0"):
        return f"a country code never starts with 0: after '+' leave out trunk prefixes such as 0 or 00 ({example})"
    if not E164_MIN_DIGITS <= len(digits) <= E164_MAX_DIGITS:
        return (
            f"a phone number has {E164_MIN_DIGITS} to {E164_MAX_DIGITS} digits after '+' (E.164), "
            f"this one has {len(digits)}"
        )
    return None


def validate_e164(number: str) -> str:
    """``number`` if it is an E.164 phone number; ValueError saying what is wrong otherwise (a pydantic validator)."""
    problem = e164_problem(number)
    if problem is not None:
        raise ValueError(problem)
    return number


def mask_number(number: str) -> str:
    """``+15551234567`` → ``+1******4567``: enough to tell numbers apart in a log, not enough to call one."""
    plus = "+" if number.startswith("+") else ""
    digits = number.removeprefix("+")
    if not _DIGITS.issuperset(digits):
        return "[not a phone number]"
    if len(digits) >= 10:
        return f"{plus}{digits[0]}{'*' * (len(digits) - 5)}{digits[-4:]}"
    if len(digits) >= 6:
        return f"{plus}{digits[0]}{'*' * (len(digits) - 3)}{digits[-2:]}"
    return plus + "*" * len(digits)


@dataclass(frozen=True, slots=True)
class SegmentCount:
    """How a body travels: ``units`` are septets (GSM-7) or UTF-16 code units (UCS-2)."""

    encoding: Encoding
    units: int
    segments: int
    first_non_gsm: str | None = None  # the first character GSM-7 cannot carry: why the body is UCS-2


def segments(text: str) -> SegmentCount:
    """Count the SMS segments ``text`` is sent in.

    GSM-7 when every character is in the GSM 03.38 alphabet (extension characters such as ``€`` and ``{``
    take 2 septets): 160 septets in one segment, 153 per segment when concatenated. Otherwise UCS-2: 70 UTF-16
    code units in one, 67 per segment (an emoji outside the BMP takes 2). A segment boundary never splits an
    extension character or a surrogate pair, as phones could not reassemble them. Look-alikes are not
    transliterated (a provider's "smart encoding" may), so the count can be high, never low. Empty text: 0.
    """
    first_non_gsm = next((char for char in text if char not in GSM7_BASIC and char not in GSM7_EXTENSION), None)
    encoding: Encoding
    if first_non_gsm is None:
        encoding = "GSM-7"
        widths = [2 if char in GSM7_EXTENSION else 1 for char in text]
    else:
        encoding = "UCS-2"
        widths = [2 if ord(char) > 0xFFFF else 1 for char in text]
    units = sum(widths)
    if units == 0:
        count = 0
    elif units <= SINGLE_SEGMENT_UNITS[encoding]:
        count = 1
    else:
        count = _pack(widths, CONCATENATED_SEGMENT_UNITS[encoding])
    return SegmentCount(encoding, units, count, first_non_gsm)


def _pack(widths: list[int], size: int) -> int:
    count, used = 1, 0
    for width in widths:
        if used + width > size:
            count, used = count + 1, 0
        used += width
    return count


def length_problem(text: str, max_segments: int = MAX_SEGMENTS) -> str | None:
    """Why ``text`` cannot be sent as an SMS of at most ``max_segments`` segments, or None if it can.

    The text is meant for API clients: over-long bodies are refused, never truncated.
    """
    if not text.strip():
        return "an SMS body must not be empty"
    surrogate = _SURROGATE.search(text)
    if surrogate is not None:
        return f"an SMS body must be valid Unicode, but character {surrogate.start() + 1} is a lone surrogate"
    count = segments(text)
    if count.segments <= max_segments:
        return None
    if count.encoding == "GSM-7":
        return (
            f"the SMS body takes {count.segments} segments in GSM-7: {count.units} septets (a segment holds 160 "
            f"alone, 153 when concatenated; ^ {{ }} [ ] ~ | \\ € count 2); at most {max_segments} segments are sent. "
            "Shorten it: it is never truncated"
        )
    return (
        f"the SMS body takes {count.segments} segments in UCS-2, because {count.first_non_gsm!r} is not in the GSM-7 "
        f"alphabet: {count.units} UTF-16 units (a segment holds 70 alone, 67 when concatenated; an emoji counts 2); "
        f"at most {max_segments} segments are sent. Shorten it, or leave out such characters: it is never truncated"
    )


class SmsSender(AsyncClosing):
    """Sends SMS through one provider account over kept-alive connections; one per process, closed at shutdown.

    An ``httpx.AsyncClient`` is fine here (webhooks need the SSRF-guarded client): the URL is fixed
    configuration, never user input. Proxy variables of the environment are ignored, as for webhooks.
    ``sender`` is an E.164 number or an alphanumeric sender ID (sent as ``From``), or a Messaging Service SID
    (``MG…``, sent as ``MessagingServiceSid``).
    """

    def __init__(
        self,
        *,
        base_url: str,
        account_sid: str,
        auth_token: str,
        sender: str,
        timeout_s: float,
        max_segments: int = MAX_SEGMENTS,
        max_connections: int = SENDER_CONNECTIONS,
    ) -> None:
        self._url = f"{base_url.rstrip('/')}/2010-04-01/Accounts/{quote(account_sid, safe='')}/Messages.json"
        self._sender = sender
        self._sender_field = "MessagingServiceSid" if _MESSAGING_SERVICE_SID.fullmatch(sender) else "From"
        self._token = auth_token
        self._max_segments = max_segments
        # All kept alive: httpcore 1.0 evicts idle connections whenever the pool holds more than
        # max_keepalive_connections in all, busy ones included (encode/httpcore#1035).
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._client = httpx.AsyncClient(
            auth=httpx.BasicAuth(account_sid, auth_token),
            headers={"user-agent": USER_AGENT, "accept": "application/json"},
            timeout=httpx.Timeout(timeout_s),
            limits=limits,
            follow_redirects=False,  # a redirect would carry the credentials elsewhere
            trust_env=False,
        )

    async def send(self, to: str, body: str, *, delivery_id: str) -> str:
        """Send ``body`` to ``to`` once; return the provider's message sid.

        Raises PermanentError for a number that is not E.164 or a body that is empty or too long (nothing is
        sent), for a 4xx answer (the provider's code and message), and for a 2xx without a sid; RetryableError
        for connection errors, timeouts, 408, 429 and 5xx (``retry_after_s`` from ``Retry-After``).
        """
        masked = mask_number(to)
        problem = e164_problem(to)
        if problem is not None:
            raise PermanentError(f"not sent to {masked}: {problem}", channel=CHANNEL)
        problem = length_problem(body, self._max_segments)
        if problem is not None:
            raise PermanentError(f"not sent: {problem}", channel=CHANNEL)
        form = {"To": to, self._sender_field: self._sender, "Body": body}
        try:
            reply = await self._client.post(self._url, data=form)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise RetryableError(
                self._scrub(f"SMS provider unreachable ({type(exc).__name__}: {exc}); nothing was sent", to),
                channel=CHANNEL,
            ) from exc
        except httpx.RequestError as exc:  # a timeout, a dropped connection, an undecodable answer
            # The request may have reached the provider: the retry can send a second SMS (at least once).
            logger.warning(
                "sms provider gave no answer; the message may have been sent",
                extra={"delivery_id": delivery_id, "to": masked, "error": type(exc).__name__},
            )
            raise RetryableError(
                f"SMS provider gave no answer ({type(exc).__name__}); it may have sent the message, "
                "and a retry can send it twice",
                channel=CHANNEL,
            ) from exc
        if reply.is_success:
            return self._accepted(reply, to, delivery_id)
        raise self._refusal(reply, to)

    def _accepted(self, reply: httpx.Response, to: str, delivery_id: str) -> str:
        answer = _json_object(reply) or {}
        sid = answer.get("sid")
        if not isinstance(sid, str) or not sid:
            # It may have been sent: retrying could send it twice, and there is no sid to trace it by.
            raise PermanentError(
                f"SMS provider answered HTTP {reply.status_code} without a message sid; the message may have "
                "been sent, so it is not retried",
                channel=CHANNEL,
                status_code=reply.status_code,
            )
        logger.info(
            "sms accepted by the provider",
            extra={
                "delivery_id": delivery_id,
                "provider_sid": sid,
                "provider_status": answer.get("status"),
                "to": mask_number(to),
            },
        )
        return sid

    def _refusal(self, reply: httpx.Response, to: str) -> RetryableError | PermanentError:
        status = reply.status_code
        answer = _json_object(reply) or {}
        code, message = answer.get("code"), answer.get("message")
        if isinstance(code, int) and isinstance(message, str):
            detail = f"({code}): {_one_line(message)}"
        else:
            excerpt = _one_line(reply.text)
            detail = f"(HTTP {status})" + (f": {excerpt}" if excerpt else "")
        if status == 429:
            reason = f"SMS provider rate limit {detail}"
        elif status == 408 or status >= 500:
            reason = f"SMS provider unavailable {detail}"
        elif status in (401, 403):
            reason = f"SMS provider refused the credentials {detail}; check SMS_ACCOUNT_SID and SMS_AUTH_TOKEN"
        elif 300 <= status < 400:
            reason = f"SMS provider redirected {detail}; redirects are not followed, check SMS_API_BASE_URL"
        else:
            reason = f"provider refused {detail}"
        reason = self._scrub(reason, to)
        if status in (408, 429) or status >= 500:
            retry_after_s = parse_retry_after(reply.headers.get("retry-after"))
            return RetryableError(reason, channel=CHANNEL, status_code=status, retry_after_s=retry_after_s)
        return PermanentError(reason, channel=CHANNEL, status_code=status)

    def _scrub(self, text: str, to: str) -> str:
        """Drop the token, should it appear, and mask the phone numbers the provider echoes (but our sender's)."""
        text = text.replace(self._token, "[token]")
        text = _PLUS_NUMBER.sub(lambda found: found[0] if found[0] == self._sender else mask_number(found[0]), text)
        return text.replace(to.removeprefix("+"), mask_number(to).removeprefix("+"))  # echoed without its '+'

    async def aclose(self) -> None:
        await self._client.aclose()


def build_sms_sender(settings: Settings) -> SmsSender | None:
    """The process's SmsSender, or None when SMS is not configured (SMS_ACCOUNT_SID, SMS_AUTH_TOKEN, SMS_FROM)."""
    if settings.SMS_ACCOUNT_SID is None or settings.SMS_AUTH_TOKEN is None or settings.SMS_FROM is None:
        return None
    return SmsSender(
        base_url=settings.SMS_API_BASE_URL,
        account_sid=settings.SMS_ACCOUNT_SID,
        auth_token=settings.SMS_AUTH_TOKEN.get_secret_value(),
        sender=settings.SMS_FROM,
        timeout_s=settings.SMS_TIMEOUT_S,
        max_segments=settings.SMS_MAX_SEGMENTS,
    )


async def post_sms(sender: SmsSender | None, payload: DeliveryPayload) -> str:
    """Send one delivery's ``text`` to its ``address``; return the provider's message sid (the body of ``send_sms``).

    Raises PermanentError when SMS is not configured on this server, and whatever ``SmsSender.send`` raises.
    """
    if sender is None:
        raise PermanentError(
            "SMS is not configured on this server (SMS_ACCOUNT_SID, SMS_AUTH_TOKEN, SMS_FROM)", channel=CHANNEL
        )
    return await sender.send(payload["address"], payload["text"], delivery_id=payload["delivery_id"])


def _json_object(reply: httpx.Response) -> dict[str, Any] | None:
    try:
        answer = reply.json()
    except ValueError:  # not JSON, or not UTF-8
        return None
    return answer if isinstance(answer, dict) else None


def _one_line(text: str) -> str:
    text = _WHITESPACE.sub(" ", text).strip()
    return text if len(text) <= PROVIDER_MESSAGE_CHARS else text[: PROVIDER_MESSAGE_CHARS - 1] + "…"

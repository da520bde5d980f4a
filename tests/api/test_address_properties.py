"""Properties of the recipient checks of POST /notify (api.schemas.Recipient and tasks.channels.sms).

Valid addresses of each channel are accepted, invalid ones refused with a message saying what is wrong, and
nothing ever raises but the documented error: pydantic's ValidationError (a 422), or ValueError from
``validate_e164`` — never something that would become a 500.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from api.schemas import MAX_ADDRESS_LENGTH, Recipient
from tasks.channels.sms import e164_problem, validate_e164

pytestmark = pytest.mark.drill  # docs/guarantees.md; `make drills` runs it with the rest

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=150)

CHANNELS = ("email", "webhook", "sms", "inapp")
# C0 and C1 controls, DEL and the Unicode line/paragraph separators: each can end a header line somewhere.
CONTROLS = st.one_of(
    st.characters(min_codepoint=0, max_codepoint=0x1F),
    st.characters(min_codepoint=0x7F, max_codepoint=0x9F),
    st.sampled_from(["\u2028", "\u2029"]),
)
ATOMS = st.from_regex(r"[a-z0-9+_-]{1,8}", fullmatch=True)
LABELS = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)
EMAILS = st.builds(
    "{}@{}.{}".format,
    st.lists(ATOMS, min_size=1, max_size=3).map(".".join),
    st.lists(LABELS, min_size=1, max_size=3).map(".".join),
    st.sampled_from(["com", "org", "net", "io", "de"]),
)
WEBHOOKS = st.builds(
    "{}://{}.com{}".format,
    st.sampled_from(["http", "https"]),
    st.lists(LABELS, min_size=1, max_size=3).map(".".join),
    st.from_regex(r"(/[a-z0-9._~-]{0,10}){0,3}(\?[a-z0-9=&]{0,10})?", fullmatch=True),
)
PHONES = st.from_regex(r"\+[1-9][0-9]{7,14}", fullmatch=True)
USER_IDS = st.from_regex(r"[A-Za-z0-9._@:-]{1,128}", fullmatch=True)
VALID = {"email": EMAILS, "webhook": WEBHOOKS, "sms": PHONES, "inapp": USER_IDS}
# Arbitrary text and near-misses: valid addresses with hostile pieces spliced in.
HOSTILE = ["\r\n", "\n", "\r", "\x00", " ", "<", ">", ",", "@", "%0d%0a", "=?utf-8?q?=0D=0A?=", "\u2028", "+", "é"]
ANY_TEXT = st.one_of(
    st.text(max_size=60),
    st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=4), EMAILS, WEBHOOKS, PHONES), max_size=5).map(
        "".join
    ),
)


def refusal(channel: str, address: str) -> str | None:
    """The message of the address's one validation error, or None when the recipient is accepted.

    Any exception but ValidationError escapes, and fails the test calling it.
    """
    try:
        Recipient.model_validate({"channel": channel, "address": address})
    except ValidationError as exc:
        [error] = exc.errors()
        assert error["loc"] == ("address",), error
        message = str(error["msg"])
        assert message.strip(), "an empty message"
        return message
    return None


def splice(text: str, index: int, piece: str) -> str:
    at = index % (len(text) + 1)
    return text[:at] + piece + text[at:]


@PROPERTY
@given(st.sampled_from(CHANNELS).flatmap(lambda channel: st.tuples(st.just(channel), VALID[channel])))
def test_valid_addresses_of_each_channel_are_accepted(case: tuple[str, str]) -> None:
    channel, address = case

    assert refusal(channel, address) is None


@PROPERTY
@given(EMAILS)
def test_a_valid_email_address_comes_back_as_given(address: str) -> None:
    recipient = Recipient.model_validate({"channel": "email", "address": address})

    assert recipient.address == address  # already normalised: lower case, no display name


@PROPERTY
@given(st.sampled_from(CHANNELS), st.data(), CONTROLS, st.integers(min_value=0))
@example("email", None, "\r\n", 15)  # data is drawn only when None is not given
def test_a_control_character_anywhere_is_refused(
    channel: str, data: st.DataObject | None, control: str, at: int
) -> None:
    valid = data.draw(VALID[channel]) if data is not None else "ada@example.com"
    address = splice(valid, at, control)

    message = refusal(channel, address)

    assert message is not None, f"accepted {address!r}"


@PROPERTY
@given(st.sampled_from(["email", "webhook"]), st.data(), CONTROLS, st.integers(min_value=0))
def test_email_and_webhook_refusals_name_the_control_characters(
    channel: str, data: st.DataObject, control: str, at: int
) -> None:
    message = refusal(channel, splice(data.draw(VALID[channel]), at, control))

    assert message is not None
    assert "control characters" in message


@PROPERTY
@given(st.sampled_from(CHANNELS), st.integers(min_value=MAX_ADDRESS_LENGTH + 1, max_value=3 * MAX_ADDRESS_LENGTH))
def test_an_address_longer_than_the_limit_is_refused_by_its_length(channel: str, length: int) -> None:
    message = refusal(channel, "a" * length)

    assert message is not None
    assert str(MAX_ADDRESS_LENGTH) in message


@PROPERTY
@given(st.sampled_from(CHANNELS), ANY_TEXT)
@example("email", "ada@example.com\r\nBcc: eve@evil.example")
@example("email", "Ada <ada@example.com>")
@example("email", "ada@example.com, eve@evil.example")
@example("webhook", "http://[::1")
@example("webhook", "http://" + "a" * 64 + ".com/")
@example("webhook", "http://xn--.com/")
@example("sms", "+١٤١٥٥٥٥٠١٢٣")  # Arabic-Indic digits: str.isdigit() says yes, E.164 says no
def test_any_text_is_accepted_or_refused_never_an_error(channel: str, address: str) -> None:
    message = refusal(channel, address)

    if message is None:
        assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", address), "a control character got through"
    if channel == "sms":
        assert (message is None) == bool(re.fullmatch(r"\+[1-9][0-9]{7,14}", address, re.ASCII))
    if channel == "inapp":
        assert (message is None) == bool(re.fullmatch(r"[A-Za-z0-9._@:-]{1,128}", address, re.ASCII))
    if channel == "webhook" and message is None:
        assert address.lower().startswith(("http://", "https://"))
        assert " " not in address


@PROPERTY
@given(PHONES, st.integers(min_value=0), st.characters(exclude_characters="0123456789"))
def test_an_e164_refusal_says_which_character_and_never_repeats_the_number(phone: str, at: int, bad: str) -> None:
    digits = phone[1:]
    at = 1 + at % len(digits)  # somewhere after the '+'
    number = phone[:at] + bad + phone[at:]

    problem = e164_problem(number)

    assert problem is not None
    assert f"character {at + 1} is {bad!r}" in problem
    assert digits not in problem
    with pytest.raises(ValueError, match="^" + re.escape(problem) + "$"):
        validate_e164(number)


@PROPERTY
@given(st.from_regex(r"\+[1-9]([0-9]{4,6}|[0-9]{15,30})", fullmatch=True))
def test_an_e164_length_refusal_gives_the_count_and_never_repeats_the_number(number: str) -> None:
    problem = e164_problem(number)

    assert problem is not None
    assert f"this one has {len(number) - 1}" in problem
    assert number[1:] not in problem

"""The SMS channel's pure parts: E.164 numbers, masking, GSM-7 / UCS-2 segment counts and the length check."""

from __future__ import annotations

import pytest

from tasks.channels.sms import (
    CONCATENATED_SEGMENT_UNITS,
    GSM7_BASIC,
    GSM7_EXTENSION,
    MAX_SEGMENTS,
    SINGLE_SEGMENT_UNITS,
    SegmentCount,
    e164_problem,
    length_problem,
    mask_number,
    segments,
    validate_e164,
)

EXTENSION_CHARACTERS = ["€", "^", "{", "}", "[", "]", "~", "|", "\\", "\f"]


@pytest.mark.parametrize(
    "number",
    [
        "+14155550123",  # US
        "+442071838750",  # UK
        "+4930901820",  # Germany, 10 digits
        "+12345678",  # 8 digits, the shortest
        "+123456789012345",  # 15 digits, the longest
        "+8613800138000",  # China
    ],
)
def test_e164_numbers_are_accepted(number: str) -> None:
    assert e164_problem(number) is None
    assert validate_e164(number) == number


@pytest.mark.parametrize(
    ("number", "problem"),
    [
        ("", "a phone number is required"),
        ("14155550123", "must start with '+' and its country code"),
        ("004930901820", "must start with '+'"),
        (" +14155550123", "must start with '+'"),
        ("+1 415 555 0123", "only the digits 0-9 after '+', but character 3 is ' '"),
        ("+1-415-555-0123", "character 3 is '-'"),
        ("+1(415)5550123", "character 3 is '('"),
        ("+14155550123\n", "character 13 is '\\n'"),
        ("++14155550123", "character 2 is '+'"),
        ("+1415555012٣", "character 12 is '٣'"),  # an Arabic-Indic digit: str.isdigit() would take it
        ("+1415555012²", "character 12 is '²'"),
        ("+04930901820", "a country code never starts with 0"),
        ("+0049301234567", "never starts with 0"),
        ("+", "8 to 15 digits after '+' (E.164), this one has 0"),
        ("+1234567", "this one has 7"),
        ("+1234567890123456", "this one has 16"),
    ],
)
def test_what_is_wrong_with_a_number_is_said(number: str, problem: str) -> None:
    said = e164_problem(number)

    assert said is not None
    assert problem in said
    with pytest.raises(ValueError, match=r"phone number|country code") as caught:
        validate_e164(number)
    assert str(caught.value) == said


def test_the_problem_never_repeats_the_number() -> None:
    for number in ["4930901820", "+04930901820", "+4930901820999999", "+49 30 901820", "+4930"]:
        said = e164_problem(number)
        assert said is not None
        assert "901820" not in said


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+15551234567", "+1******4567"),
        ("+442071838750", "+4*******8750"),
        ("+4930901820", "+4*****1820"),
        ("+12345678", "+1*****78"),
        ("+12345", "+*****"),
        ("15551234567", "1******4567"),
        ("+1 555 123 4567", "[not a phone number]"),
        ("", ""),
    ],
)
def test_numbers_are_masked(number: str, masked: str) -> None:
    assert mask_number(number) == masked


def test_the_gsm_alphabet_is_the_whole_default_table_without_escape() -> None:
    assert len(GSM7_BASIC) == 127  # 128 code points, ESC (0x1B) only announces the extension table
    assert "\x1b" not in GSM7_BASIC
    assert len(GSM7_EXTENSION) == 10
    assert not GSM7_BASIC & GSM7_EXTENSION
    assert {"@", "£", "$", "¥", "¤", "Ç", "Δ", "Ω", "ß", "¿", "à", "\n", "\r", "_", "§"} <= GSM7_BASIC
    assert not {"`", "ç", "á", "ł", "\u2019", "\u201c", "\t"} & (GSM7_BASIC | GSM7_EXTENSION)


@pytest.mark.parametrize(
    ("length", "count"),
    [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4), (1530, 10), (1531, 11)],
)
def test_gsm_text_takes_160_in_one_segment_and_153_per_concatenated_segment(length: int, count: int) -> None:
    assert segments("a" * length) == SegmentCount("GSM-7", length, count)


def test_empty_text_is_no_segment() -> None:
    assert segments("") == SegmentCount("GSM-7", 0, 0)


def test_the_whole_gsm_alphabet_stays_gsm() -> None:
    text = "".join(sorted(GSM7_BASIC))

    assert segments(text) == SegmentCount("GSM-7", 127, 1)


@pytest.mark.parametrize("char", EXTENSION_CHARACTERS)
def test_extension_characters_take_two_septets(char: str) -> None:
    assert segments(char) == SegmentCount("GSM-7", 2, 1)
    assert segments("a" * 158 + char) == SegmentCount("GSM-7", 160, 1)
    assert segments("a" * 159 + char) == SegmentCount("GSM-7", 161, 2)
    assert segments(char * 80) == SegmentCount("GSM-7", 160, 1)
    assert segments(char * 81).segments == 2


def test_an_extension_character_is_never_split_across_segments() -> None:
    # 306 septets would fit 2 x 153 if the escape and its character could sit in different segments
    text = "a" * 152 + "€" + "a" * 152

    assert segments(text) == SegmentCount("GSM-7", 306, 3)
    assert segments("a" * 151 + "€" + "a" * 153) == SegmentCount("GSM-7", 306, 2)


@pytest.mark.parametrize("char", ["😀", "ç", "`", "\u2019", "ł", "中", "\t"])
def test_one_character_outside_gsm_makes_it_ucs2(char: str) -> None:
    count = segments("Hello Ada " + char)

    assert count.encoding == "UCS-2"
    assert count.first_non_gsm == char


@pytest.mark.parametrize(
    ("length", "count"),
    [(70, 1), (71, 2), (134, 2), (135, 3), (670, 10), (671, 11)],
)
def test_ucs2_text_takes_70_in_one_segment_and_67_per_concatenated_segment(length: int, count: int) -> None:
    text = "ł" + "a" * (length - 1)

    assert segments(text) == SegmentCount("UCS-2", length, count, "ł")


def test_an_emoji_is_two_utf16_units() -> None:
    assert segments("😀") == SegmentCount("UCS-2", 2, 1, "😀")
    assert segments("😀" * 35) == SegmentCount("UCS-2", 70, 1, "😀")
    assert segments("😀" * 36) == SegmentCount("UCS-2", 72, 2, "😀")
    assert segments("a" * 68 + "😀") == SegmentCount("UCS-2", 70, 1, "😀")
    assert segments("👍🏽") == SegmentCount("UCS-2", 4, 1, "👍")  # a skin-tone modifier is a second emoji
    assert segments("€😀").units == 3  # in UCS-2, € is one unit like any BMP character


def test_a_surrogate_pair_is_never_split_across_segments() -> None:
    assert segments("a" * 66 + "😀" + "a" * 66) == SegmentCount("UCS-2", 134, 3, "😀")
    assert segments("a" * 65 + "😀" + "a" * 67) == SegmentCount("UCS-2", 134, 2, "😀")


def test_segment_sizes_are_the_standard_ones() -> None:
    assert SINGLE_SEGMENT_UNITS == {"GSM-7": 160, "UCS-2": 70}
    assert CONCATENATED_SEGMENT_UNITS == {"GSM-7": 153, "UCS-2": 67}
    assert MAX_SEGMENTS == 10


@pytest.mark.parametrize(
    "text",
    ["a" * 1530, "€" * 760, "ł" * 670, "😀" * 330, "Hi Ada, your code is 123456.", "x"],
)
def test_bodies_within_the_limit_pass(text: str) -> None:
    assert length_problem(text) is None


def test_two_unit_characters_fill_a_153_or_67_unit_segment_one_unit_short() -> None:
    # neither an escape + character nor a surrogate pair straddles two segments, and 153 and 67 are odd
    assert segments("€" * 760) == SegmentCount("GSM-7", 1520, 10)
    assert segments("€" * 765) == SegmentCount("GSM-7", 1530, 11)
    assert segments("😀" * 330) == SegmentCount("UCS-2", 660, 10, "😀")
    assert segments("😀" * 335) == SegmentCount("UCS-2", 670, 11, "😀")


def test_a_gsm_body_over_the_limit_is_refused_saying_by_how_much() -> None:
    said = length_problem("a" * 1529 + "€")

    assert said == (
        "the SMS body takes 11 segments in GSM-7: 1531 septets (a segment holds 160 alone, 153 when concatenated; "
        "^ { } [ ] ~ | \\ € count 2); at most 10 segments are sent. Shorten it: it is never truncated"
    )


def test_a_ucs2_body_over_the_limit_names_the_character_that_made_it_ucs2() -> None:
    said = length_problem("a" * 669 + "😀")

    assert said == (
        "the SMS body takes 11 segments in UCS-2, because '😀' is not in the GSM-7 alphabet: 671 UTF-16 units "
        "(a segment holds 70 alone, 67 when concatenated; an emoji counts 2); at most 10 segments are sent. "
        "Shorten it, or leave out such characters: it is never truncated"
    )


def test_a_lower_limit_is_honoured_and_one_segment_means_160_or_70() -> None:
    assert length_problem("a" * 306, max_segments=2) is None
    assert length_problem("a" * 307, max_segments=2) is not None
    assert length_problem("a" * 160, max_segments=1) is None
    assert length_problem("a" * 161, max_segments=1) is not None
    assert length_problem("ł" * 70, max_segments=1) is None
    assert length_problem("ł" * 71, max_segments=1) is not None


@pytest.mark.parametrize("text", ["", " ", "\n\n", "\t "])
def test_an_empty_body_is_refused(text: str) -> None:
    assert length_problem(text) == "an SMS body must not be empty"


def test_a_lone_surrogate_is_refused_before_it_could_break_the_form_encoding() -> None:
    # JSON allows "\ud83d" on its own; UTF-8 cannot encode it
    assert length_problem("Hi \ud83d there") == (
        "an SMS body must be valid Unicode, but character 4 is a lone surrogate"
    )

"""Properties of template rendering: a context value is data, never markup and never template code.

The templates are our own, in a temporary root, so each part's expected output can be written down exactly.
"""

from __future__ import annotations

from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tasks.rendering import MAX_SUBJECT_LENGTH, InAppMessage, TemplateLibrary, TemplateProblem

pytestmark = pytest.mark.drill  # docs/guarantees.md; `make drills` runs it with the rest

PROPERTY = settings(derandomize=True, database=None, deadline=None, max_examples=150)

TEMPLATES = {
    # every part but the subject shows the value; the subject is static so that any value renders
    "body": {
        "subject.txt": "Static",
        "body.txt": "[{{ v }}]",
        "body.html": '<p title="{{ v }}">{{ v }}</p>',
        "sms.txt": "[{{ v }}]",
    },
    "subject": {"subject.txt": "[{{ v }}]", "body.txt": "x"},
    "inbox": {"subject.txt": "Static", "body.txt": "x", "inapp.txt": "[{{ v }}]\n\n[{{ v }}]"},
    "inbox_body": {"subject.txt": "Static", "body.txt": "x", "inapp.txt": "Title\nurl: https://x.example\n\n[{{ v }}]"},
}
TAGS_IN_HTML = 2  # the '<' of <p ...> and </p>

# Pieces of Jinja syntax, markup and header tricks, mixed into arbitrary text.
HOSTILE = [
    "{{ 7*7 }}",
    "{{",
    "}}",
    "{%",
    "%}",
    "{% raw %}",
    "{% endraw %}",
    "{#",
    "#}",
    "{{ v }}",
    "{{ ''.__class__.__mro__ }}",
    "{% for x in range(10) %}x{% endfor %}",
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "'",
    '"',
    "&amp;",
    "<",
    ">",
    "&",
    "\r\n",
    "\n",
    "\u2028",
    "\x85",
    "=?utf-8?q?=0D=0ABcc:_eve@evil.example?=",
    "=?utf-8?b?w7w=?=",
]
STRINGS = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=5)), max_size=8).map("".join),
)
# What JSON can put in a context: any nesting of these.
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), STRINGS),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)


def escaped(text: str) -> str:
    """HTML-escaped as a text node and inside a double- or single-quoted attribute."""
    for raw, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&#34;"), ("'", "&#39;")):
        text = text.replace(raw, entity)
    return text


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> TemplateLibrary:
    root: Path = tmp_path_factory.mktemp("templates")
    for name, parts in TEMPLATES.items():
        (root / name).mkdir()
        for part, source in parts.items():
            (root / name / part).write_text(source, encoding="utf-8")
    return TemplateLibrary(root=root)


@PROPERTY
@given(value=JSON_VALUES)
@example(value="{{ 7*7 }}")
@example(value="{% raw %}")
@example(value="<script>alert('x')</script> & \"co\"")
def test_a_value_is_escaped_in_html_and_literal_in_text_and_sms(library: TemplateLibrary, value: Any) -> None:
    shown = str(value)

    rendered = library.render("body", {"v": value}, sms=True)

    assert rendered.html == f'<p title="{escaped(shown)}">{escaped(shown)}</p>'
    assert rendered.html.count("<") == TAGS_IN_HTML  # no element or comment came from the value
    assert rendered.text == f"[{shown}]"
    assert rendered.sms == f"[{shown}]"


def _subject_must_be_refused(subject: str) -> bool:
    decoded = str(SMTP.header_factory("Subject", subject))  # as the email package would write it out
    return len(subject) > MAX_SUBJECT_LENGTH or len(subject.splitlines()) > 1 or len(decoded.splitlines()) > 1


@PROPERTY
@given(value=STRINGS)
@example(value="{{ 7*7 }}")
@example(value="{% raw %}")
@example(value="Ada\r\nBcc: eve@evil.example")
@example(value="=?utf-8?q?=0D=0ABcc:_eve@evil.example?=")
@example(value="x" * MAX_SUBJECT_LENGTH)
def test_a_value_in_the_subject_is_literal_one_line_or_refused(library: TemplateLibrary, value: str) -> None:
    expected = f"[{value}]"

    try:
        subject, problem = library.render("subject", {"v": value}).subject, None
    except TemplateProblem as exc:
        subject, problem = None, exc

    if problem is not None:
        assert problem.field == "context"
        assert "subject" in str(problem)
        assert _subject_must_be_refused(expected), f"refused a fine subject: {problem}"
    else:
        assert not _subject_must_be_refused(expected), f"accepted {subject!r}"
        assert subject == expected


@PROPERTY
@given(value=STRINGS)
@example(value="{{ 7*7 }}")
@example(value="{% raw %}")
@example(value="Ada\nurl: https://evil.example")
def test_a_value_in_the_inbox_message_is_literal_or_refused(library: TemplateLibrary, value: str) -> None:
    expected = f"[{value}]"

    try:
        inapp, problem = library.render("inbox", {"v": value}, inapp=True).inapp, None
    except TemplateProblem as exc:
        inapp, problem = None, exc

    if problem is not None:
        assert problem.field == "context"
        assert "inapp.txt" in str(problem)
        # only a value that breaks the title line (a line break, a control character) or makes it too long
        assert len(expected.splitlines()) > 1 or not expected.isprintable() or len(expected) > MAX_SUBJECT_LENGTH
    else:
        assert inapp == InAppMessage(title=expected, body=expected, url=None)


@PROPERTY
@given(value=STRINGS)
@example(value="{{ 7*7 }}")
@example(value="line one\nurl: https://evil.example\n\nline three")
def test_a_value_in_the_inbox_body_is_kept_as_it_is(library: TemplateLibrary, value: str) -> None:
    rendered = library.render("inbox_body", {"v": value}, inapp=True)

    assert rendered.inapp == InAppMessage(title="Title", body=f"[{value}]", url="https://x.example")

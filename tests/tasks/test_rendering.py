"""TemplateLibrary: the shipped templates, escaping, and the problems it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.channels.sms import SegmentCount, segments
from tasks.rendering import TemplateLibrary, TemplateProblem, default_library


@pytest.fixture
def library() -> TemplateLibrary:
    return TemplateLibrary()


def test_welcome_renders_every_part(library: TemplateLibrary) -> None:
    rendered = library.render("welcome", {"name": "Ada", "login_url": "https://app.example.com/login"})

    assert rendered.subject == "Welcome to Herald, Ada!"
    assert rendered.text.startswith("Hi Ada,\n")
    assert "Sign in here: https://app.example.com/login" in rendered.text
    assert rendered.html is not None
    assert "<p>Hi Ada,</p>" in rendered.html
    assert '<a href="https://app.example.com/login">Sign in</a>' in rendered.html


def test_optional_context_has_defaults(library: TemplateLibrary) -> None:
    rendered = library.render("welcome", {"name": "Ada", "product": "Acme"})

    assert rendered.subject == "Welcome to Acme, Ada!"
    assert "Sign in" not in rendered.text


def test_html_is_autoescaped_and_text_is_not(library: TemplateLibrary) -> None:
    rendered = library.render("welcome", {"name": "<b>Ada</b> & co"})

    assert rendered.html is not None
    assert "Hi &lt;b&gt;Ada&lt;/b&gt; &amp; co," in rendered.html
    assert "<b>Ada</b>" not in rendered.html
    assert "Hi <b>Ada</b> & co," in rendered.text
    assert rendered.subject == "Welcome to Herald, <b>Ada</b> & co!"


def test_attribute_values_are_escaped_too(library: TemplateLibrary) -> None:
    rendered = library.render("password_reset", {"reset_url": 'https://x.example/"><script>'})

    assert rendered.html is not None
    assert 'href="https://x.example/&#34;&gt;&lt;script&gt;"' in rendered.html


def test_missing_variable_names_it(library: TemplateLibrary) -> None:
    with pytest.raises(TemplateProblem) as caught:
        library.render("welcome", {})

    assert caught.value.field == "context"
    assert "'name'" in str(caught.value)
    assert "'welcome'" in str(caught.value)


def test_password_reset_needs_reset_url(library: TemplateLibrary) -> None:
    with pytest.raises(TemplateProblem) as caught:
        library.render("password_reset", {"name": "Ada"})
    assert caught.value.field == "context"
    assert "'reset_url'" in str(caught.value)

    rendered = library.render("password_reset", {"reset_url": "https://app.example.com/reset/abc"})
    assert rendered.subject == "Reset your Herald password"
    assert "https://app.example.com/reset/abc" in rendered.text
    assert "Hi there," in rendered.text


@pytest.mark.parametrize("name", ["nope", "../welcome", "welcome/../welcome", "Welcome", "", "/etc/passwd"])
def test_unknown_template_lists_the_known_ones(library: TemplateLibrary, name: str) -> None:
    with pytest.raises(TemplateProblem) as caught:
        library.render(name, {"name": "Ada"})

    assert caught.value.field == "template"
    assert "known templates: password_reset, welcome" in str(caught.value)


def test_names_lists_the_shipped_templates(library: TemplateLibrary) -> None:
    assert library.names() == ["password_reset", "welcome"]
    assert library.exists("welcome")
    assert not library.exists("../welcome")


def test_jinja_syntax_in_context_is_data_not_code(library: TemplateLibrary) -> None:
    rendered = library.render("welcome", {"name": "{{ 7*7 }}{% if true %}x{% endif %}"})

    assert rendered.subject == "Welcome to Herald, {{ 7*7 }}{% if true %}x{% endif %}!"
    assert "{{ 7*7 }}" in rendered.text
    assert rendered.html is not None
    assert "{{ 7*7 }}" in rendered.html
    assert "49" not in rendered.subject + rendered.text + rendered.html


@pytest.mark.parametrize(
    "name", ["Ada\nBcc: eve@example.com", "Ada\r\nX: y", "Ada\u2028Bcc: eve@example.com", "Ada\x85X"]
)
def test_subject_must_stay_one_line(library: TemplateLibrary, name: str) -> None:
    # every break str.splitlines() knows would also make the email header refuse the subject
    with pytest.raises(TemplateProblem, match="single line") as caught:
        library.render("welcome", {"name": name})

    assert caught.value.field == "context"


def test_template_without_html_renders_none(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "subject.txt").write_text("Ping {{ n }}\n")
    (tmp_path / "plain" / "body.txt").write_text("n = {{ n }}\n")

    rendered = TemplateLibrary(tmp_path).render("plain", {"n": 3})

    assert rendered.subject == "Ping 3"
    assert rendered.text == "n = 3"
    assert rendered.html is None


def test_broken_context_types_are_template_problems(tmp_path: Path) -> None:
    (tmp_path / "sum").mkdir()
    (tmp_path / "sum" / "subject.txt").write_text("{{ a + b }}")
    (tmp_path / "sum" / "body.txt").write_text("-")

    with pytest.raises(TemplateProblem) as caught:
        TemplateLibrary(tmp_path).render("sum", {"a": 1, "b": "x"})

    assert caught.value.field == "context"


def test_default_library_is_shared() -> None:
    assert default_library() is default_library()


def test_sms_txt_is_rendered_stripped_only_when_asked(library: TemplateLibrary) -> None:
    context = {"name": "Ada", "login_url": "https://app.example.com/login"}

    assert library.render("welcome", context).sms is None
    rendered = library.render("welcome", context, sms=True)
    assert rendered.sms == "Welcome to Herald, Ada! Your account is ready. Sign in: https://app.example.com/login"
    assert library.render("welcome", {"name": "Ada"}, sms=True).sms == "Welcome to Herald, Ada! Your account is ready."


def test_the_shipped_sms_texts_are_one_gsm7_segment_line(library: TemplateLibrary) -> None:
    welcome = library.render("welcome", {"name": "Ada", "login_url": "https://app.example.com/login"}, sms=True)
    reset = library.render("password_reset", {"reset_url": "https://app.example.com/reset/abc"}, sms=True)

    for text in (welcome.sms, reset.sms):
        assert text is not None
        assert len(text.splitlines()) == 1
        assert segments(text) == SegmentCount("GSM-7", len(text), 1)
    assert reset.sms == (
        "Reset your Herald password within 30 minutes: https://app.example.com/reset/abc Not you? Ignore this message."
    )


def test_a_template_without_sms_txt_cannot_render_an_sms(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "subject.txt").write_text("Ping")
    (tmp_path / "plain" / "body.txt").write_text("A long email body")
    library = TemplateLibrary(tmp_path)

    assert library.render("plain", {}).sms is None
    with pytest.raises(TemplateProblem, match=r"template 'plain' has no sms\.txt") as caught:
        library.render("plain", {}, sms=True)
    assert caught.value.field == "template"


def test_a_variable_only_sms_txt_uses_is_needed_only_for_an_sms(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "subject.txt").write_text("Your code")
    (tmp_path / "code" / "body.txt").write_text("See your phone.")
    (tmp_path / "code" / "sms.txt").write_text("Code: {{ code }}")
    library = TemplateLibrary(tmp_path)

    assert library.render("code", {}).text == "See your phone."
    with pytest.raises(TemplateProblem, match=r"needs variable 'code' in context \(sms\.txt\)"):
        library.render("code", {}, sms=True)

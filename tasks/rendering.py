"""Jinja2 templates under ``tasks/templates/<name>/``: subject.txt, body.txt, optional body.html, sms.txt, inapp.txt.

HTML is autoescaped, text is not. Undefined variables are errors (StrictUndefined), so a
missing context value is caught when the notification is accepted, not when it is sent.
``sms.txt`` is rendered only for a notification with an SMS recipient, and stripped: that text is the
SMS body, counted in segments at the API and sent as it is.

``inapp.txt`` is rendered only for a notification with an ``inapp`` recipient. Its first line is the inbox
message's title (one line, at most 255 characters), an optional second line ``url: <http(s) URL>`` its link,
then a blank line, then the body (stripped)::

    Welcome, {{ name }}!
    url: {{ login_url }}

    Your account is ready.

A template without ``inapp.txt`` gives an inapp recipient its subject as the title and its ``body.txt``
(stripped) as the body, without a link: an inbox message reads fine as a short email text, unlike an SMS.

A template is read and compiled the first time it is rendered and kept for the life of the process,
like code: every ``POST /notify`` renders one, and looking it up on disk again (Jinja's auto-reload
stats each file, and so did the existence check) cost more than rendering it. A new template folder
is found without a restart; an edited one needs a restart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from tasks.channels.email import subject_problem
from tasks.messages import CONTROL_CHARACTERS
from tasks.template_info import TemplateInfo, read_template_info

TEMPLATE_ROOT = Path(__file__).parent / "templates"
MAX_SUBJECT_LENGTH = 255
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined")
_HTTP_URL = re.compile(r"^https?://[^\s/?#]+[^\s]*$", re.IGNORECASE)
# inapp.txt is parsed by its lines after rendering: a line break a context value brings is rendered as this
# (a private-use character) so that it cannot end the title or add a 'url:' line; in the body it is a line break.
_VALUE_NEWLINE = "\ue000"


@dataclass(frozen=True, slots=True)
class _Parts:
    subject: jinja2.Template
    text: jinja2.Template
    html: jinja2.Template | None
    sms: jinja2.Template | None
    inapp: jinja2.Template | None


@dataclass(frozen=True, slots=True)
class InAppMessage:
    """What an ``inapp`` recipient's inbox gets."""

    title: str
    body: str
    url: str | None = None


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    subject: str
    text: str
    html: str | None
    sms: str | None = None  # the SMS body: the rendered sms.txt, when asked for
    inapp: InAppMessage | None = None  # the inbox message: inapp.txt, or subject + body.txt; when asked for


class TemplateProblem(ValueError):
    """The template is unknown or cannot be rendered with the given context."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class TemplateLibrary:
    def __init__(self, root: Path = TEMPLATE_ROOT) -> None:
        self._root = root
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(root),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            keep_trailing_newline=False,
            auto_reload=False,
        )
        self._inapp_env = self._env.overlay(finalize=_mark_value_newlines, cache_size=0)
        self._compiled: dict[str, _Parts] = {}
        self._info: dict[str, TemplateInfo] = {}

    def names(self) -> list[str]:
        return sorted(p.name for p in self._root.iterdir() if (p / "subject.txt").is_file())

    def exists(self, name: str) -> bool:
        return bool(_NAME.match(name)) and (self._root / name / "subject.txt").is_file()

    def info(self, name: str) -> TemplateInfo:
        """Its template.toml (category, critical), read once; ``name`` must exist. Raises TemplateInfoError."""
        found = self._info.get(name)
        if found is None:
            found = self._info[name] = read_template_info(self._root / name)
        return found

    def categories(self) -> set[str]:
        return {category for name in self.names() if (category := self.info(name).category) is not None}

    def render(self, name: str, context: dict[str, Any], *, sms: bool = False, inapp: bool = False) -> RenderedMessage:
        """Render the parts of template ``name``, its ``sms.txt`` (stripped) if ``sms``, its inbox message if ``inapp``.

        Raises TemplateProblem naming what is wrong, also when ``sms`` is asked of a template without ``sms.txt``.
        """
        parts = self._compiled.get(name) or self._load(name)
        subject = self._render(name, "subject.txt", parts.subject, context).strip()
        if len(subject) > MAX_SUBJECT_LENGTH:
            raise TemplateProblem(
                f"the rendered subject is {len(subject)} characters; at most {MAX_SUBJECT_LENGTH}", field="context"
            )
        problem = subject_problem(subject)  # not only CR/LF: \x85, \u2028, or one in an RFC 2047 encoded word
        if problem is not None:
            raise TemplateProblem(f"the rendered subject {problem}", field="context")
        text = self._render(name, "body.txt", parts.text, context)
        html = self._render(name, "body.html", parts.html, context) if parts.html is not None else None
        sms_text = None
        if sms:
            if parts.sms is None:
                # Not body.txt instead: an email body (greeting, paragraphs, sign-off, often a character outside
                # GSM-7 such as '—') would go out as many billed segments that read badly on a phone. Sending
                # a template by SMS is the template author's decision, made by writing sms.txt.
                raise TemplateProblem(
                    f"template {name!r} has no sms.txt, so it cannot be sent to an sms recipient; "
                    f"add tasks/templates/{name}/sms.txt, or send literal 'text'",
                    field="template",
                )
            sms_text = self._render(name, "sms.txt", parts.sms, context).strip()
        inapp_message = None
        if inapp:
            inapp_message = (
                parse_inapp(name, self._render(name, "inapp.txt", parts.inapp, context))
                if parts.inapp is not None
                else InAppMessage(title=subject, body=text.strip())
            )
        return RenderedMessage(subject=subject, text=text, html=html, sms=sms_text, inapp=inapp_message)

    def _load(self, name: str) -> _Parts:
        if not self.exists(name):
            known = ", ".join(self.names())
            raise TemplateProblem(f"unknown template {name!r}; known templates: {known}", field="template")
        has_html = (self._root / name / "body.html").is_file()
        has_sms = (self._root / name / "sms.txt").is_file()
        has_inapp = (self._root / name / "inapp.txt").is_file()
        parts = _Parts(
            subject=self._compile(name, "subject.txt"),
            text=self._compile(name, "body.txt"),
            html=self._compile(name, "body.html") if has_html else None,
            sms=self._compile(name, "sms.txt") if has_sms else None,
            inapp=self._compile(name, "inapp.txt", self._inapp_env) if has_inapp else None,
        )
        self._compiled[name] = parts
        return parts

    def _compile(self, name: str, part: str, env: jinja2.Environment | None = None) -> jinja2.Template:
        try:
            template = (env or self._env).get_template(f"{name}/{part}")
        except jinja2.TemplateError as exc:  # a syntax error: not kept, so it is reported on every request
            raise TemplateProblem(f"template {name!r} could not render {part}: {exc}", field="context") from None
        # Jinja keeps a template's globals as a ChainMap over the environment's, so later changes to those
        # show through; it copies them into every render's context, key by key, which cost half of a render.
        # Nothing changes them here: one plain dict.
        template.globals = dict(template.globals)
        return template

    @staticmethod
    def _render(name: str, part: str, template: jinja2.Template, context: dict[str, Any]) -> str:
        try:
            return template.render(context)
        except jinja2.UndefinedError as exc:
            missing = _UNDEFINED_NAME.search(str(exc))
            what = f"variable {missing.group(1)!r}" if missing else str(exc)
            raise TemplateProblem(f"template {name!r} needs {what} in context ({part})", field="context") from None
        except jinja2.TemplateError as exc:
            raise TemplateProblem(f"template {name!r} could not render {part}: {exc}", field="context") from None
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise TemplateProblem(
                f"template {name!r} could not render {part} with this context: {exc}", field="context"
            ) from None


def parse_inapp(name: str, rendered: str) -> InAppMessage:
    """The title, optional ``url:`` line and body of a rendered inapp.txt; TemplateProblem saying what is wrong."""
    lines = rendered.strip().split("\n")
    title = lines[0].strip()
    rest = lines[1:]
    url = None
    if rest and rest[0].startswith("url:"):
        url = rest[0].removeprefix("url:").strip()
        rest = rest[1:]
    if rest and rest[0].strip():
        raise _inapp_problem(name, "the title (and url: line) must be followed by a blank line, then the body")
    if _VALUE_NEWLINE in title or (url is not None and _VALUE_NEWLINE in url):
        raise _inapp_problem(name, "a context value would put a line break in the title or the url: line")
    if not title or len(title.splitlines()) > 1 or CONTROL_CHARACTERS.search(title):
        raise _inapp_problem(name, "the first line, the title, must be one line of text")
    if len(title) > MAX_SUBJECT_LENGTH:
        raise _inapp_problem(name, f"the title is {len(title)} characters; at most {MAX_SUBJECT_LENGTH}")
    if url is not None and not _HTTP_URL.match(url):
        raise _inapp_problem(name, f"the url: line must give an http:// or https:// URL, got {url[:100]!r}")
    return InAppMessage(title=title, body="\n".join(rest).replace(_VALUE_NEWLINE, "\n").strip(), url=url)


def _mark_value_newlines(value: Any) -> Any:
    return value.replace("\n", _VALUE_NEWLINE) if isinstance(value, str) else value


def _inapp_problem(name: str, problem: str) -> TemplateProblem:
    return TemplateProblem(f"template {name!r} (inapp.txt): {problem}", field="context")


@cache
def default_library() -> TemplateLibrary:
    return TemplateLibrary()

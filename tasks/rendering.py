"""Jinja2 templates under ``tasks/templates/<name>/``: subject.txt, body.txt and optional body.html.

HTML is autoescaped, text is not. Undefined variables are errors (StrictUndefined), so a
missing context value is caught when the notification is accepted, not when it is sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

TEMPLATE_ROOT = Path(__file__).parent / "templates"
MAX_SUBJECT_LENGTH = 255
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined")


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    subject: str
    text: str
    html: str | None


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
        )

    def names(self) -> list[str]:
        return sorted(p.name for p in self._root.iterdir() if (p / "subject.txt").is_file())

    def exists(self, name: str) -> bool:
        return bool(_NAME.match(name)) and (self._root / name / "subject.txt").is_file()

    def render(self, name: str, context: dict[str, Any]) -> RenderedMessage:
        """Render all parts of template ``name``; raise TemplateProblem naming what is wrong."""
        if not self.exists(name):
            known = ", ".join(self.names())
            raise TemplateProblem(f"unknown template {name!r}; known templates: {known}", field="template")
        subject = self._render(name, "subject.txt", context).strip()
        if len(subject) > MAX_SUBJECT_LENGTH:
            raise TemplateProblem(
                f"the rendered subject is {len(subject)} characters; at most {MAX_SUBJECT_LENGTH}", field="context"
            )
        if len(subject.splitlines()) > 1:  # not only CR/LF: the email header refuses \x85, \u2028, ... too
            raise TemplateProblem("the rendered subject must be a single line", field="context")
        text = self._render(name, "body.txt", context)
        html = self._render(name, "body.html", context) if (self._root / name / "body.html").is_file() else None
        return RenderedMessage(subject=subject, text=text, html=html)

    def _render(self, name: str, part: str, context: dict[str, Any]) -> str:
        try:
            return self._env.get_template(f"{name}/{part}").render(context)
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


@cache
def default_library() -> TemplateLibrary:
    return TemplateLibrary()

"""A TemplateLibrary of a test's own templates, written under a temporary folder."""

from __future__ import annotations

from pathlib import Path

from tasks.rendering import TemplateLibrary


def template_library(root: Path, templates: dict[str, dict[str, str]]) -> TemplateLibrary:
    """``templates``: template name -> {part file name (``subject.txt``, ``sms.txt``, ...) -> its text}."""
    for name, parts in templates.items():
        (root / name).mkdir()
        for part, text in parts.items():
            (root / name / part).write_text(text)
    return TemplateLibrary(root)

"""A template's optional ``template.toml``: what kind of message it is, for preferences::

    category = "account"   # users can opt out of a category (PUT /users/{user_id}/preferences)
    critical = true        # sent whatever the user's preferences say (a password reset they asked for)

Both keys are optional; a template without the file has no category and is not critical.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

INFO_FILE = "template.toml"
CATEGORY_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_KEYS = frozenset({"category", "critical"})


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    category: str | None = None
    critical: bool = False


class TemplateInfoError(ValueError):
    """A template.toml that cannot be read; the message names the file. A deployment error, not a client's."""


def read_template_info(folder: Path) -> TemplateInfo:
    path = folder / INFO_FILE
    if not path.is_file():
        return TemplateInfo()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TemplateInfoError(f"{path}: {exc}") from None
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise TemplateInfoError(f"{path}: unknown keys {unknown}; known: {sorted(_KEYS)}")
    category = data.get("category")
    if category is not None and not (isinstance(category, str) and re.match(CATEGORY_PATTERN, category)):
        raise TemplateInfoError(f"{path}: category must be lower-case letters, digits, '_' or '-' (at most 64)")
    critical = data.get("critical", False)
    if not isinstance(critical, bool):
        raise TemplateInfoError(f"{path}: critical must be true or false")
    return TemplateInfo(category=category, critical=critical)

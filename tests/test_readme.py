"""The README's configuration table stays true to Settings."""

from __future__ import annotations

import re
from pathlib import Path

from core.config import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_documented_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", README, flags=re.MULTILINE))
    for name, field in Settings.model_fields.items():
        assert name in rows, f"{name} is missing from the README's configuration table"
        documented = rows[name].strip().strip("`")
        default = field.default
        if default is None or default == "":
            assert documented == "unset", (name, documented)
        elif isinstance(default, bool):
            assert documented == str(default).lower(), (name, documented)
        elif isinstance(default, float):
            assert float(documented) == default, (name, documented)
        else:
            assert documented == str(default), (name, documented)

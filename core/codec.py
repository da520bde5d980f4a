"""JSON for arq's job payloads: arq pickles by default, which lets anyone who can write to Redis run code."""

from __future__ import annotations

import json
from typing import Any


def json_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def json_loads(raw: bytes) -> Any:
    return json.loads(raw)

"""Values as JSON carries them, for the HTTP gateways and the CLI's --json: floats JSON
cannot carry become the strings "NaN", "Infinity", "-Infinity" (as in protobuf's JSON
mapping), bytes become base64."""

from __future__ import annotations

import base64
import json
import math
from typing import Any


def json_values(values: list[Any]) -> list[Any]:
    return [_json_value(value) for value in values]


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, list):
        return json_values(value)
    return value


def dumps(payload: Any) -> str:
    return json.dumps(payload, allow_nan=False, separators=(",", ":"))

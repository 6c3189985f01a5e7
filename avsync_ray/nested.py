"""Nested settings (a config's ``model_dump``) as flat dotted keys, and as short content ids that name them."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (values as they are)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def content_id(data: Any) -> str:
    """16 hex digits of the SHA-256 of ``data`` as canonical JSON (sorted keys): the same settings give the same
    id in any process, so outputs stamped with it can be compared across runs."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

"""The one way to version settings: a short, stable digest of what changes a stage's output.

A stage's Dagster code version is ``<algorithm version>-<digest of its settings>``, and stored models are keyed by
the digest of their options, so changing a threshold or an embedder shows exactly the affected rows stale.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(item) for item in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    return value


def settings_digest(settings: Any, length: int = 8) -> str:
    """Hex digest of ``settings`` (a dataclass, dict, list or scalar); key order and set order do not matter."""
    text = json.dumps(_plain(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def versioned(algorithm_version: str, settings: Any) -> str:
    """``<algorithm version>-<settings digest>``: the code version of a stage whose output depends on both."""
    return f"{algorithm_version}-{settings_digest(settings)}"

"""Snapshots: the canonical manifest of a dataset version and its content address."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import pandas as pd

from cv_dataops.curation.rows import column_values, present

MANIFEST_VERSION = 1
SNAPSHOT_ID = re.compile(r"snap-[0-9a-f]{16}")


def manifest_rows(rows: pd.DataFrame) -> list[dict]:
    for column in ("image_id", "uri", "split"):
        if column not in rows.columns:
            raise ValueError(f"a snapshot needs a {column!r} column")
    ids = [str(v) for v in rows["image_id"].tolist()]
    repeated = [k for k, count in Counter(ids).items() if count > 1]
    if repeated:
        raise ValueError(f"image_id must be unique in a snapshot; repeated: {repeated[:3]}")
    entries = [{"image_id": image_id, "uri": str(uri), "sha256": image_id,
                "label": None if not present(label) else str(label), "split": str(split)}
               for image_id, uri, label, split in zip(ids, rows["uri"].tolist(), column_values(rows, "label"),
                                                      rows["split"].tolist(), strict=True)]
    return sorted(entries, key=lambda e: e["image_id"])


def snapshot_manifest(rows: pd.DataFrame) -> tuple[str, bytes]:
    """``(snapshot_id, manifest_bytes)``: the canonical JSON manifest of a dataset version and its address.

    The manifest lists, sorted by ``image_id``, each image's ``image_id``, ``uri``, ``sha256`` (= ``image_id``),
    ``label`` (null when unknown) and ``split``, as UTF-8 JSON with sorted keys and no whitespace or timestamps.
    ``snapshot_id`` is ``"snap-"`` + the first 16 hex digits of the SHA-256 of those bytes: the same images, uris,
    labels and splits give the same id whatever the row order; any change gives another.
    """
    manifest = {"manifest_version": MANIFEST_VERSION, "images": manifest_rows(rows)}
    data = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return "snap-" + hashlib.sha256(data).hexdigest()[:16], data


def read_snapshot(storage, snapshot_id: str, prefix: str = "snapshots") -> pd.DataFrame | None:
    """A written snapshot's rows (image_id, uri, label, split, snapshot_id) from its manifest under the data root
    ``storage``, or None when no whole snapshot has that id (its manifest is written last)."""
    if not SNAPSHOT_ID.fullmatch(snapshot_id):  # what snapshot_manifest makes; anything else names no snapshot
        return None
    key = f"{prefix}/{snapshot_id}/manifest.json"
    if not storage.exists(key):
        return None
    images = json.loads(storage.read_bytes(key))["images"]
    frame = pd.DataFrame(images, columns=["image_id", "uri", "sha256", "label", "split"])
    return frame.drop(columns="sha256").assign(snapshot_id=snapshot_id)

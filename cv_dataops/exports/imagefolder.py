"""ImageFolder export: ``<split>/<label>/<image>`` trees that torchvision and most trainers read as they are."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import pandas as pd

from cv_dataops.curation.rows import UNLABELLED, present
from cv_dataops.curation.settings import SPLITS
from cv_dataops.curation.snapshots import manifest_rows

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")



def safe_folder_name(label: object) -> str:
    """A label as one folder name: path separators and characters Windows refuses become ``_``; never ``.``,
    ``..`` or empty (so a label can never escape its split's folder)."""
    if not present(label):
        return UNLABELLED
    name = _UNSAFE.sub("_", str(label)).strip().rstrip(".")
    if name in ("", ".", ".."):
        name = "_" + name
    return name[:200]


def _extension(uri: str) -> str:
    name = str(uri).split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or not re.fullmatch(r"[A-Za-z0-9]{1,8}", ext):
        return ""
    return "." + ext


def export_path(image_id: str, uri: str, label: object, split: str) -> str:
    """Where :func:`export_imagefolder` puts an image: ``<split>/<label or unlabelled>/<image_id[:16]><ext>``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for image {image_id}: expected one of {SPLITS}")
    return f"{split}/{safe_folder_name(label)}/{str(image_id)[:16]}{_extension(uri)}"


def export_imagefolder(rows: pd.DataFrame, read_bytes: Callable[[str], bytes],
                       write_bytes: Callable[[str, bytes], None], *, verify: bool = True) -> None:
    """Write each row's image to ``<split>/<label or "unlabelled">/<image_id[:16]><original extension>``.

    ``read_bytes(uri)`` fetches an image, ``write_bytes(relative_path, data)`` stores it (paths use ``/``; labels
    are made safe folder names by :func:`safe_folder_name`). With ``verify`` (the default) the bytes read must
    hash to the image's id (its SHA-256): an image changed since ingestion raises ``ValueError`` instead of
    silently entering the dataset version. Rows are written in ``image_id`` order.
    """
    entries = manifest_rows(rows)
    for entry in entries:
        path = export_path(entry["image_id"], entry["uri"], entry["label"], entry["split"])
        data = read_bytes(entry["uri"])
        if verify and hashlib.sha256(data).hexdigest() != entry["image_id"].lower():
            raise ValueError(f"the bytes at {entry['uri']} no longer hash to image {entry['image_id']}")
        write_bytes(path, data)


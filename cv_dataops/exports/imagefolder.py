"""ImageFolder export: ``<split>/<label>/<image>`` trees that torchvision and most trainers read as they are."""

from __future__ import annotations

import re
from collections.abc import Callable

import pandas as pd

from cv_dataops.curation.rows import UNLABELLED, present
from cv_dataops.curation.settings import SPLITS
from cv_dataops.curation.snapshots import manifest_rows
from cv_dataops.images.verified import ContentChanged, read_verified

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
                       write_bytes: Callable[[str, bytes], None], *, verify: bool = True,
                       link: Callable[[str], bool] | None = None) -> list[dict]:
    """Write each row's image to ``<split>/<label or "unlabelled">/<image_id[:16]><original extension>``.

    ``read_bytes(uri)`` fetches an image, ``write_bytes(relative_path, data)`` stores it (paths use ``/``; labels
    are made safe folder names by :func:`safe_folder_name`). With ``verify`` (the default) the bytes read must
    hash to the image's id (:func:`~cv_dataops.images.verified.read_verified`): an image whose file changed or
    vanished since ingestion is left out, never exported as that image, and returned as ``{image_id, uri,
    problem}`` (an empty list when every image was written). Rows are written in ``image_id`` order.
    ``link(relative_path)``, when given, puts an image in place from a tree that already holds it at that path
    (the previous snapshot's, whose files were verified when written): True means done, nothing read.
    """
    skipped = []
    for entry in manifest_rows(rows):
        path = export_path(entry["image_id"], entry["uri"], entry["label"], entry["split"])
        if link is not None and link(path):
            continue
        try:
            data = read_verified(entry["uri"], entry["image_id"], read_bytes) if verify else read_bytes(entry["uri"])
        except ContentChanged as error:
            skipped.append({"image_id": entry["image_id"], "uri": entry["uri"], "problem": str(error)})
            continue
        write_bytes(path, data)
    return skipped


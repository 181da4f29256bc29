"""Small inline thumbnails for the Dagster UI: markdown with base64 PNGs, kept to a few KB each."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterable

from cv_dataops.images.decode import decode
from cv_dataops.images.verified import read_verified


def thumbnail_png(data: bytes, side: int = 64) -> bytes:
    """A PNG thumbnail, longest side ``side`` pixels, EXIF orientation applied."""
    buffer = io.BytesIO()
    decode(data, side).rgb.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail_data_uri(data: bytes, side: int = 64) -> str:
    """A ``data:image/png;base64,...`` thumbnail (:func:`thumbnail_png`)."""
    return png_data_uri(thumbnail_png(data, side))


def catalog_thumbnail_png(uri: str, image_id: str, read: Callable[[str], bytes], side: int = 96) -> bytes | None:
    """A catalog image's PNG thumbnail, or None when its file moved, changed since ingest or cannot be decoded:
    a thumbnail is a courtesy and never fails the stage that shows it."""
    try:
        return thumbnail_png(read_verified(uri, image_id, read), side=side)
    except Exception:  # noqa: BLE001
        return None


def catalog_thumbnail(uri: str, image_id: str, read: Callable[[str], bytes], side: int = 48) -> str | None:
    """A catalog image's thumbnail as a data URI (:func:`catalog_thumbnail_png`)."""
    png = catalog_thumbnail_png(uri, image_id, read, side)
    return None if png is None else png_data_uri(png)


def markdown_grid(sections: dict[str, Iterable[tuple[str, str]]]) -> str:
    """One markdown table row of thumbnails per section: {title: [(caption, data_uri), ...]}."""
    lines = []
    for title, items in sections.items():
        items = list(items)
        if not items:
            continue
        lines += [f"**{title}**", "", "| " + " | ".join(caption for caption, _ in items) + " |",
                  "|" + "---|" * len(items), "| " + " | ".join(f"![]({uri})" for _, uri in items) + " |", ""]
    return "\n".join(lines) or "nothing to show"

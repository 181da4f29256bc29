"""Reading an image's bytes again, checked against its ``image_id``.

An ``image_id`` is the SHA-256 of the bytes ingested; the file stays where it landed, so it can be overwritten or
deleted afterwards. Every stage that reads an image again (quality's fallback, embeddings, thumbnails, exports,
search by a catalog image) reads it through :func:`read_verified`: bytes that no longer hash to the id, or a file
that is gone, raise :class:`ContentChanged`, and the stage leaves that image out with the reason, instead of
measuring new bytes as the old image. The new bytes are a new object version for the landing planner, so they are
ingested as a new image by a later batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

from cv_dataops.core.storage import read_uri


class ContentChanged(Exception):
    """The file behind an image's URI is not the image any more: overwritten (``now`` is the new bytes' SHA-256)
    or gone (``now`` is None). The message is one line."""

    def __init__(self, uri: str, image_id: str, now: str | None):
        self.uri, self.image_id, self.now = uri, image_id, now
        what = f"now holds other bytes (sha256 {now[:12]}…)" if now else "no longer exists"
        super().__init__(f"image {image_id[:12]}… changed since ingest: {uri} {what}")

    def __reduce__(self):  # crosses process boundaries (quality's workers) intact
        return type(self), (self.uri, self.image_id, self.now)

    @property
    def vanished(self) -> bool:
        return self.now is None


def read_verified(uri: str, image_id: str, read: Callable[[str], bytes] = read_uri) -> bytes:
    """The bytes at ``uri`` (read with ``read``, e.g. the catalog resource's ``uri_reader()``) if they still hash
    to ``image_id``; else :class:`ContentChanged`. Other read errors (an S3 outage) pass through unchanged."""
    try:
        data = read(uri)
    except FileNotFoundError:
        raise ContentChanged(uri, image_id, None) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != str(image_id).lower():
        raise ContentChanged(uri, image_id, digest)
    return data


class VerifiedReader:
    """A ``read(uri)`` for code that is handed URIs only (quality's worker pool): each URI is checked against the
    image id it was given for. Picklable when ``read`` is (a ``UriReader``)."""

    def __init__(self, read: Callable[[str], bytes], image_ids: Mapping[str, str]):
        self.read = read
        self.image_ids = dict(image_ids)  # uri -> image_id

    def __call__(self, uri: str) -> bytes:
        return read_verified(uri, self.image_ids[uri], self.read)

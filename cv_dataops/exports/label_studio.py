"""Label Studio: tasks out (a dataset version to review or label, a review round with its reasons), links Label
Studio can open (local files, S3) and its labelling config."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pandas as pd

from cv_dataops.curation.snapshots import manifest_rows


def label_studio_config(labels: Iterable[str]) -> str:
    """A Label Studio labelling config matching :func:`export_label_studio`'s results (one choice per image)."""
    from xml.sax.saxutils import quoteattr

    choices = "".join(f'\n    <Choice value={quoteattr(str(label))}/>' for label in sorted(set(labels)))
    return (f'<View>\n  <Image name="image" value="$image"/>\n  <Choices name="choice" toName="image" '
            f'choice="single">{choices}\n  </Choices>\n</View>\n')


def export_label_studio(rows: pd.DataFrame, *, as_annotations: bool = False,
                        image_url: Callable[[str], str] | None = None) -> list[dict]:
    """Label Studio tasks, one per row, in ``image_id`` order.

    ``data`` holds ``image`` (the uri, or ``image_url(uri)``: Label Studio serves local files only through its
    local-files storage, so pass a function that maps paths to what your instance serves), ``image_id``,
    ``split`` and ``uri``. A row with a known label gets a ``choices`` result (``from_name="choice"``,
    ``to_name="image"``, matching :func:`label_studio_config`) under ``predictions`` (to review; the default) or,
    with ``as_annotations``, under ``annotations`` (to import as ground truth).
    """
    tasks = []
    for entry in manifest_rows(rows):
        image = image_url(entry["uri"]) if image_url else entry["uri"]
        task: dict = {"data": {"image": image, "image_id": entry["image_id"], "split": entry["split"],
                               "uri": entry["uri"]}}
        if entry["label"] is not None:
            result = [{"from_name": "choice", "to_name": "image", "type": "choices",
                       "value": {"choices": [entry["label"]]}}]
            if as_annotations:
                task["annotations"] = [{"result": result}]
            else:
                task["predictions"] = [{"model_version": "cv-dataops", "result": result}]
        tasks.append(task)
    return tasks



LOCAL_FILES_PATH = "/data/local-files/?d="


def label_studio_image_url(uri: str, *, local_files_root: str | None = None,
                           presign: Callable[[str], str] | None = None) -> str:
    """A link Label Studio can open for an image ``uri``.

    A local path becomes ``/data/local-files/?d=<path relative to local_files_root>`` (Label Studio's local-files
    serving, enabled with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
    ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` = ``local_files_root``; default root ``/``). A path outside the root
    is a ValueError naming both. An ``s3://`` URI is given to ``presign`` when one is passed (an https link valid
    for a while), else kept as is, for a project with S3 cloud storage that resolves ``s3://`` links. Other URLs
    (http, https) are kept.
    """
    from urllib.parse import quote

    if uri.startswith("s3://"):
        return presign(uri) if presign else uri
    if "://" in uri and not uri.startswith("file://"):
        return uri
    import os

    path = os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)
    root = os.path.abspath(local_files_root or os.sep)
    relative = os.path.relpath(path, root)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise ValueError(f"image {path} is outside Label Studio's local files root {root}: set local_files_root "
                         f"to a folder holding the images")
    return LOCAL_FILES_PATH + quote(relative.replace(os.sep, "/"), safe="/")


def s3_presigner(client, expires_seconds: int) -> Callable[[str], str]:
    """``presign`` for :func:`label_studio_image_url`: a boto3 client's presigned GET links."""
    def presign(uri: str) -> str:
        bucket, _, key = uri[len("s3://"):].partition("/")
        return client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                             ExpiresIn=int(expires_seconds))
    return presign


def review_tasks(rows: pd.DataFrame, *, image_url: Callable[[str], str] | None = None,
                 model_version: str = "cv-dataops") -> list[dict]:
    """Label Studio tasks for a review round, one per row, in row order.

    ``rows`` needs ``image_id``, ``uri`` and ``reason``; optional ``score``, ``score_meaning``, ``current_label``,
    ``prefill_label``, ``detail`` and ``position``. ``data`` carries ``image`` (``image_url(uri)``), ``image_id``
    (how the decision finds its way back: :func:`cv_dataops.labels.sources.read_label_file` reads it), ``uri`` and
    the reason for review with its score; a ``prefill_label`` becomes a ``predictions`` entry with that ``score``
    (``from_name="choice"``, ``to_name="image"``, as :func:`label_studio_config`)."""
    tasks = []
    for row in rows.to_dict("records"):
        data = {"image": image_url(row["uri"]) if image_url else row["uri"], "image_id": row["image_id"],
                "uri": row["uri"], "reason": row["reason"]}
        for column in ("position", "score", "score_meaning", "current_label", "detail"):
            value = row.get(column)
            if value is not None and not (isinstance(value, float) and value != value):
                data[column] = value.item() if hasattr(value, "item") else value
        task: dict = {"data": data}
        label = row.get("prefill_label")
        if isinstance(label, str) and label:
            prediction = {"model_version": model_version, "result": [
                {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]}
            if "score" in data:
                prediction["score"] = float(data["score"])
            task["predictions"] = [prediction]
        tasks.append(task)
    return tasks

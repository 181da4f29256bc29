"""Label Studio: tasks out (a dataset version to review or label) and its labelling config."""

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


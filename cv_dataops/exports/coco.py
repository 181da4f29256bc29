"""COCO export: image-level classification as COCO JSON, with ids stable across exports and versions."""

from __future__ import annotations

import hashlib

import pandas as pd

from cv_dataops.curation.snapshots import manifest_rows, snapshot_manifest
from cv_dataops.exports.imagefolder import export_path


def coco_id(image_id: str) -> int:
    """A stable positive integer id for an image: the first 52 bits of the SHA-256 of its ``image_id`` (exact in
    JavaScript's doubles too), the same in every export and every version."""
    return int(hashlib.sha256(str(image_id).encode()).hexdigest()[:13], 16) or 1


def export_coco(rows: pd.DataFrame, width_height: pd.DataFrame) -> dict:
    """A COCO dataset: ``images``, ``categories`` and one image-level classification annotation per labelled image.

    Image ids come from :func:`coco_id` (stable across exports and versions); each image carries ``file_name`` (its
    :func:`~cv_dataops.exports.imagefolder.export_path`), ``width``/``height`` (from ``width_height``: ``image_id, width, height``),
    ``split``, ``uri`` and ``sha256``. Categories are the sorted labels, numbered from 1. An annotation has the id
    of its image, ``bbox = [0, 0, width, height]`` (the full image), its ``area``, ``iscrowd: 0``, the full image
    as its polygon and ``attributes: {"annotation_type": "classification"}``. No timestamps: the same rows give the
    same dict.
    """
    entries = manifest_rows(rows)
    sizes = width_height.drop_duplicates("image_id", keep="last")
    size_of = {str(i): (int(w), int(h)) for i, w, h in zip(sizes["image_id"].tolist(), sizes["width"].tolist(),
                                                            sizes["height"].tolist(), strict=True)}
    missing = [e["image_id"] for e in entries if e["image_id"] not in size_of]
    if missing:
        raise ValueError(f"no width and height for {len(missing)} image(s), e.g. {missing[0]}")
    labels = sorted({e["label"] for e in entries if e["label"] is not None})
    category = {label: number for number, label in enumerate(labels, start=1)}
    images, annotations, used = [], [], {}
    for entry in entries:
        number = coco_id(entry["image_id"])
        if number in used:
            raise ValueError(f"COCO id collision between {used[number]} and {entry['image_id']}")
        used[number] = entry["image_id"]
        width, height = size_of[entry["image_id"]]
        images.append({"id": number, "file_name": export_path(entry["image_id"], entry["uri"], entry["label"],
                                                              entry["split"]),
                       "width": width, "height": height, "split": entry["split"], "uri": entry["uri"],
                       "sha256": entry["sha256"]})
        if entry["label"] is not None:
            annotations.append({"id": number, "image_id": number, "category_id": category[entry["label"]],
                                "bbox": [0, 0, width, height], "area": width * height, "iscrowd": 0,
                                "segmentation": [[0, 0, width, 0, width, height, 0, height]],
                                "attributes": {"annotation_type": "classification"}})
    snapshot = snapshot_manifest(rows)[0]
    return {"info": {"description": "cv-dataops curated dataset", "version": snapshot},
            "licenses": [], "images": images,
            "categories": [{"id": number, "name": label, "supercategory": ""} for label, number in category.items()],
            "annotations": annotations}


"""Label files a team already has, and the review loop's decisions, read into label events with provenance.

Every reader takes the file's bytes and name and returns ``(events, problems)``: the good rows become
:class:`LabelEvent`\\ s and every row that is not used is a :class:`SourceProblem` with the file, the line (CSV) or the
item (COCO image or annotation, Label Studio task and annotation) and a one-line reason. A row with an unknown class
(per the taxonomy), an unknown image (per the caller's image lookup) or a malformed field is reported and skipped;
a file that cannot be read at all (not UTF-8, not JSON, not the expected shape) is one problem and no events. No
reader raises on bad content.

Formats:

- CSV: a header with ``label`` and ``path`` (or ``filename``) or ``image_id``; optional ``annotator`` and
  ``confidence`` (a number in [0, 1]). Decoded by :func:`cv_dataops.ingest.labels.decode_labels_file` (UTF-8 with or
  without BOM; latin-1 and UTF-16 refused). One row per line, parsed strictly, as at landing. An empty label is
  reported (an import row that says nothing). The same image listed twice by the same annotator with different
  labels is reported at the later line and neither label is used; the same label twice is one event.
- COCO JSON: image-level categories from annotations without a ``bbox`` or from an image's own ``category_id`` (or
  ``category`` name). Images are found by ``file_name``, then by ``id``. Box annotations are not interpreted: they
  are carried through unchanged in the label event's ``extra`` JSON (``{"boxes": [...], "categories": {...}}``). An
  image with boxes but no image-level category is reported (it has no label to carry them).
- Label Studio JSON export (a list of tasks): ``annotations[].result[]`` of type ``choices``; the image is the task
  data's ``image_id`` (as :func:`cv_dataops.exports.label_studio.export_label_studio` writes it), else its ``image``
  or ``uri`` through the lookup. A ``was_cancelled`` annotation is no decision, nor is a task without annotations
  (neither is a problem). Every other annotation is one event (annotator from ``completed_by``, time from
  ``updated_at`` or ``created_at``); several annotations of one task are resolved by the audit
  (:mod:`cv_dataops.labels.audit`: one vote per annotator, their latest; majority; then the latest; then the
  annotator name), so the same rule holds across files, and any disagreement is audited as ``disputed``.
  Predictions are ignored (they are our own pre-fill).

Imports are source ``import``; files the review loop drops into ``reviews/`` are source ``review``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import pandas as pd

from cv_dataops.ingest.labels import LabelsFileError, decode_labels_file
from cv_dataops.labels.taxonomy import Taxonomy

FILE_SOURCES = ("import", "review")  # what a label file can be; landing and auto events are made elsewhere
_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")  # as cv_dataops.ingest.labels: a quote never spans lines
CSV_KEY_COLUMNS = ("image_id", "path", "filename")


@dataclass(frozen=True)
class LabelEvent:
    """One label given to one image, with where it came from (a row of the `labels` table before it is stored)."""

    image_id: str
    label: str
    source: str
    origin: str
    origin_file: str
    source_digest: str
    confidence: float | None = None
    model_version: str | None = None
    annotator: str | None = None
    at: datetime | None = None  # None: the time it is recorded
    extra: str | None = None

    @property
    def event_id(self) -> str:
        """The same event (source file, place in it, content) always gets the same id."""
        parts = [self.source_digest, self.origin, self.image_id, self.label, self.source, self.annotator,
                 self.model_version, None if self.confidence is None else repr(float(self.confidence)),
                 None if self.at is None else self.at.isoformat()]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SourceProblem:
    """One row (or the whole file, with neither line nor item) that was not used, and why."""

    file: str
    reason: str
    line: int | None = None
    item: str | None = None  # e.g. "task 12 annotation 40", "annotation 7", "images[3]"

    def __str__(self) -> str:
        where = f":{self.line}" if self.line is not None else (f" ({self.item})" if self.item else "")
        return f"{self.file}{where}: {self.reason}"

    def as_dict(self) -> dict:
        return asdict(self)


ImageLookup = Callable[[str], str | None] | Mapping[str, str]


def normalised_path(text: str) -> str:
    path = text.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return posixpath.normpath(path).lstrip("/") if path else ""


class CatalogImages:
    """An image lookup from the `images` table: an image id, a relative path, a URI, or a file name that only one
    image has (an ambiguous file name finds nothing, so it is reported as unknown)."""

    def __init__(self, images: pd.DataFrame):
        self.by_key: dict[str, str] = {}
        names: dict[str, set[str]] = {}
        for row in images.itertuples(index=False):
            image_id = row.image_id
            self.by_key[image_id] = image_id
            for column in ("relative_path", "uri"):
                value = getattr(row, column, None)
                if isinstance(value, str) and value:
                    self.by_key.setdefault(normalised_path(value) if column == "relative_path" else value, image_id)
            path = getattr(row, "relative_path", None)
            if isinstance(path, str) and path:
                names.setdefault(posixpath.basename(normalised_path(path)), set()).add(image_id)
        self.by_name = {name: next(iter(ids)) for name, ids in names.items() if len(ids) == 1}

    def __call__(self, key: str) -> str | None:
        key = key.strip()
        found = self.by_key.get(key) or self.by_key.get(normalised_path(key))
        if found is None and "/" not in normalised_path(key):
            found = self.by_name.get(normalised_path(key))
        return found


def _lookup(images: ImageLookup) -> Callable[[str], str | None]:
    if isinstance(images, Mapping):
        return lambda key: images.get(key)
    return images


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_source(source: str) -> None:
    if source not in FILE_SOURCES:
        raise ValueError(f"a label file's source must be one of {', '.join(FILE_SOURCES)}, not {source!r}")


def _confidence(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError
    return value


# --- CSV ------------------------------------------------------------------------------------------------------


def read_csv_labels(data: bytes, name: str, *, taxonomy: Taxonomy, images: ImageLookup,
                    source: str = "import") -> tuple[list[LabelEvent], list[SourceProblem]]:
    """Label events from a CSV file (``path|filename|image_id,label[,annotator][,confidence]``)."""
    _check_source(source)
    lookup = _lookup(images)
    try:
        text = decode_labels_file(data, name)
    except LabelsFileError as error:
        return [], [SourceProblem(name, str(error))]
    lines = [(number, line) for number, line in enumerate(_LINES.findall(text), start=1) if line.strip()]
    if not lines:
        return [], [SourceProblem(name, "empty: it needs a header with a 'label' column and a 'path', 'filename' "
                                        "or 'image_id' column")]
    header_line, header_text = lines[0]
    try:
        header = [column.strip().lower() for column in next(csv.reader([header_text], strict=True))]
    except csv.Error as error:
        return [], [SourceProblem(name, f"the header is not valid CSV ({error})", line=header_line)]
    if "label" not in header or not set(header) & set(CSV_KEY_COLUMNS):
        return [], [SourceProblem(name, f"needs a 'label' column and a 'path', 'filename' or 'image_id' column; "
                                        f"its columns are {header}", line=header_line)]
    position = {column: header.index(column) for column in ("label", "annotator", "confidence", *CSV_KEY_COLUMNS)
                if column in header}
    digest = content_digest(data)
    problems: list[SourceProblem] = []
    chosen: dict[tuple[str, str | None], tuple[int, LabelEvent]] = {}
    refused: set[tuple[str, str | None]] = set()
    for number, line in lines[1:]:
        def problem(reason: str) -> None:
            problems.append(SourceProblem(name, reason, line=number))  # noqa: B023 (used at once)

        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error as error:
            problem(f"malformed row ({error}; an unbalanced quote?)")
            continue
        if len(fields) > len(header) and any(field.strip() for field in fields[len(header):]):
            problem(f"malformed row: {len(fields)} fields but the header has {len(header)} (an unquoted comma?)")
            continue
        value = {column: (fields[index].strip() if index < len(fields) else "") for column, index in position.items()}
        key = next((value[column] for column in CSV_KEY_COLUMNS if value.get(column)), "")
        if not key:
            problem("malformed row: no image_id, path or filename")
            continue
        if not value["label"]:
            problem("no label")
            continue
        confidence = None
        if value.get("confidence"):
            try:
                confidence = _confidence(value["confidence"])
            except ValueError:
                problem(f"malformed confidence {value['confidence']!r} (a number from 0 to 1)")
                continue
        label = taxonomy.resolve(value["label"])
        if label is None:
            problem(taxonomy.describe_unknown(value["label"]))
            continue
        image_id = lookup(key)
        if image_id is None:
            problem(f"unknown image {key!r}")
            continue
        annotator = value.get("annotator") or None
        event = LabelEvent(image_id=image_id, label=label, source=source, origin=f"{name}:{number}",
                           origin_file=name, source_digest=digest, confidence=confidence, annotator=annotator)
        voter = (image_id, annotator)
        if voter in refused:
            problem(f"image {key!r} is listed again by the same annotator after a conflicting row; not used")
            continue
        if voter in chosen:
            first_line, first = chosen[voter]
            if first.label != label:
                del chosen[voter]
                refused.add(voter)
                problem(f"image {key!r} is listed with different labels: {first.label!r} (line {first_line}) and "
                        f"{label!r}; neither is used")
            continue  # the same label again adds nothing
        chosen[voter] = (number, event)
    return [event for _, event in chosen.values()], problems


# --- COCO -----------------------------------------------------------------------------------------------------


def _has_box(annotation: Mapping) -> bool:
    return annotation.get("bbox") not in (None, [], "") or annotation.get("segmentation") not in (None, [], "")


def _json_document(data: bytes, name: str) -> tuple[object, SourceProblem | None]:
    try:
        text = decode_labels_file(data, name)
    except LabelsFileError as error:
        return None, SourceProblem(name, str(error))
    try:
        return json.loads(text), None
    except json.JSONDecodeError as error:
        return None, SourceProblem(name, f"not valid JSON: {error.msg} (column {error.colno})", line=error.lineno)


def read_coco_labels(data: bytes, name: str, *, taxonomy: Taxonomy, images: ImageLookup,
                     source: str = "import") -> tuple[list[LabelEvent], list[SourceProblem]]:
    """Image-level label events from a COCO JSON file; boxes carried through in ``extra``."""
    _check_source(source)
    document, failure = _json_document(data, name)
    if failure:
        return [], [failure]
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        return [], [SourceProblem(name, "not a COCO file: it needs an 'images' list")]
    return _coco_events(document, name, content_digest(data), taxonomy, _lookup(images), source)


def _is_id(value: object) -> bool:
    """A COCO id: an integer or a non-empty string (JSON true, lists, objects are not)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value != "")


def _coco_events(document: dict, name: str, digest: str, taxonomy: Taxonomy, lookup: Callable[[str], str | None],
                 source: str) -> tuple[list[LabelEvent], list[SourceProblem]]:
    problems: list[SourceProblem] = []
    categories: dict[object, str] = {}
    listed_categories = document.get("categories") or []
    if not isinstance(listed_categories, list):
        problems.append(SourceProblem(name, "malformed 'categories': not a list"))
        listed_categories = []
    for index, category in enumerate(listed_categories):
        if not isinstance(category, dict) or not _is_id(category.get("id")) or not isinstance(category.get("name"),
                                                                                              str):
            problems.append(SourceProblem(name, "malformed category: it needs an 'id' and a 'name'",
                                          item=f"categories[{index}]"))
            continue
        categories[category["id"]] = category["name"]

    # COCO image id -> (our image id, where, [(label, origin)], [boxes])
    found: dict[object, tuple[str, str, list[tuple[str, str]], list[dict]]] = {}
    unresolved: set[object] = set()

    def category_label(category_id: object, item: str) -> str | None:
        if not _is_id(category_id) or category_id not in categories:
            problems.append(SourceProblem(name, f"unknown category_id {category_id!r}", item=item))
            return None
        label = taxonomy.resolve(categories[category_id])
        if label is None:
            problems.append(SourceProblem(name, taxonomy.describe_unknown(categories[category_id]), item=item))
        return label

    for index, image in enumerate(document["images"]):
        if not isinstance(image, dict):
            problems.append(SourceProblem(name, "malformed image: not an object", item=f"images[{index}]"))
            continue
        file_name, coco_id = image.get("file_name"), image.get("id")
        if not (_is_id(coco_id) or isinstance(file_name, str) and file_name) or (
                file_name is not None and not isinstance(file_name, str)) or (
                coco_id is not None and not _is_id(coco_id)):
            problems.append(SourceProblem(name, "malformed image: it needs a 'file_name' (a string) or an 'id' (a "
                                                "number or string)", item=f"images[{index}]"))
            continue
        item = f"image {coco_id if coco_id is not None else file_name}"
        if coco_id is not None and (coco_id in found or coco_id in unresolved):
            problems.append(SourceProblem(name, f"image id {coco_id!r} is listed twice; the first is used", item=item))
            continue
        keys = [str(key) for key in (file_name, coco_id) if key not in (None, "")]
        image_id = next((found_id for found_id in map(lookup, keys) if found_id), None)
        if image_id is None:
            problems.append(SourceProblem(name, f"unknown image {keys[0]!r}", item=item))
            if coco_id is not None:
                unresolved.add(coco_id)
            continue
        labels: list[tuple[str, str]] = []
        if image.get("category_id") is not None:
            label = category_label(image["category_id"], item)
            if label:
                labels.append((label, f"{name} {item}"))
        elif image.get("category") is not None:
            label = taxonomy.resolve(image["category"])
            if label:
                labels.append((label, f"{name} {item}"))
            else:
                problems.append(SourceProblem(name, taxonomy.describe_unknown(str(image["category"])), item=item))
        found[coco_id if coco_id is not None else ("file_name", file_name)] = (image_id, item, labels, [])

    annotations = document.get("annotations") or []
    if not isinstance(annotations, list):
        problems.append(SourceProblem(name, "malformed 'annotations': not a list"))
        annotations = []
    for index, annotation in enumerate(annotations):
        item = (f"annotation {annotation['id']}" if isinstance(annotation, dict) and _is_id(annotation.get("id"))
                else f"annotations[{index}]")
        if not isinstance(annotation, dict) or not _is_id(annotation.get("image_id")):
            problems.append(SourceProblem(name, "malformed annotation: it needs an 'image_id' (a number or string)",
                                          item=item))
            continue
        if annotation["image_id"] not in found:
            if annotation["image_id"] not in unresolved:  # an unknown image is reported once, at the image
                problems.append(SourceProblem(name, f"annotation of image {annotation['image_id']!r}, which is not "
                                                    f"in 'images'", item=item))
            continue
        entry = found[annotation["image_id"]]
        if _has_box(annotation):
            entry[3].append(annotation)
            continue
        if annotation.get("category_id") is None:
            problems.append(SourceProblem(name, "malformed annotation: no category_id and no bbox", item=item))
            continue
        label = category_label(annotation["category_id"], item)
        if label:
            entry[2].append((label, f"{name} {item}"))

    events: list[LabelEvent] = []
    for image_id, item, labels, boxes in found.values():
        distinct = sorted({label for label, _ in labels})
        if len(distinct) > 1:
            problems.append(SourceProblem(name, f"several image-level categories ({', '.join(distinct)}); none is "
                                                f"used", item=item))
            continue
        if not distinct:
            if boxes:
                problems.append(SourceProblem(name, f"{len(boxes)} box(es) but no image-level category: no label, "
                                                    f"so the boxes are not carried", item=item))
            continue  # an image listed without any category is unlabelled, not a problem
        extra = None
        if boxes:
            used = [box.get("category_id") for box in boxes]
            extra = json.dumps({"boxes": boxes, "categories": {str(key): value for key, value in categories.items()
                                                               if key in used}}, sort_keys=True)
        events.append(LabelEvent(image_id=image_id, label=distinct[0], source=source, origin=labels[0][1],
                                 origin_file=name, source_digest=digest, extra=extra))
    return events, problems


# --- Label Studio ---------------------------------------------------------------------------------------------


def _annotator(completed_by: object) -> str | None:
    if isinstance(completed_by, dict):
        for key in ("email", "username"):
            if completed_by.get(key):
                return str(completed_by[key])
        completed_by = completed_by.get("id")
    if completed_by is None or completed_by == "":
        return None
    return f"user {completed_by}" if isinstance(completed_by, int) else str(completed_by)


def _timestamp(text: object) -> datetime | None:
    if text in (None, ""):
        return None
    moment = datetime.fromisoformat(str(text))  # ValueError for a malformed time
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def read_label_studio_export(data: bytes, name: str, *, taxonomy: Taxonomy, images: ImageLookup,
                             source: str = "review") -> tuple[list[LabelEvent], list[SourceProblem]]:
    """One label event per submitted (not cancelled) annotation of a Label Studio JSON export."""
    _check_source(source)
    document, failure = _json_document(data, name)
    if failure:
        return [], [failure]
    if isinstance(document, dict) and "images" in document:
        return [], [SourceProblem(name, "a COCO file, not a Label Studio export (read it as COCO)")]
    if not isinstance(document, list):
        return [], [SourceProblem(name, "not a Label Studio JSON export: it needs a list of tasks (export as "
                                        "'JSON', not 'JSON-MIN')")]
    return _label_studio_events(document, name, content_digest(data), taxonomy, _lookup(images), source)


def _label_studio_events(tasks: list, name: str, digest: str, taxonomy: Taxonomy,
                         lookup: Callable[[str], str | None], source: str
                         ) -> tuple[list[LabelEvent], list[SourceProblem]]:
    events: list[LabelEvent] = []
    problems: list[SourceProblem] = []
    for index, task in enumerate(tasks):
        task_item = f"task {task.get('id', f'#{index}')}" if isinstance(task, dict) else f"tasks[{index}]"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            problems.append(SourceProblem(name, "malformed task: it needs a 'data' object", item=task_item))
            continue
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list):
            problems.append(SourceProblem(name, "malformed 'annotations': not a list", item=task_item))
            continue
        submitted = [a for a in annotations if not (isinstance(a, dict) and a.get("was_cancelled"))]
        if not submitted:
            continue  # not annotated, or only skipped: no decision
        data = task["data"]
        keys = [str(data[key]) for key in ("image_id", "image", "uri") if data.get(key) not in (None, "")]
        image_id = next((found for found in map(lookup, keys) if found), None)
        if image_id is None:
            reason = f"unknown image {keys[0]!r}" if keys else "malformed task: no image_id, image or uri in its data"
            problems.append(SourceProblem(name, reason, item=task_item))
            continue
        for position, annotation in enumerate(submitted):
            item = (f"{task_item} annotation {annotation.get('id', f'#{position}')}" if isinstance(annotation, dict)
                    else f"{task_item} annotations[{position}]")
            if not isinstance(annotation, dict) or not isinstance(annotation.get("result", []), list):
                problems.append(SourceProblem(name, "malformed annotation: it needs a 'result' list", item=item))
                continue
            results = [r for r in annotation.get("result", []) if isinstance(r, dict)]
            choices_results = [r for r in results if r.get("type") == "choices"
                               or (isinstance(r.get("value"), dict) and "choices" in r["value"])]
            values = [r.get("value") for r in choices_results]
            if any(not isinstance(value, dict) or not isinstance(value.get("choices", []), list) for value in values):
                problems.append(SourceProblem(name, "malformed choices result: 'value.choices' is not a list",
                                              item=item))
                continue
            choices = [choice for value in values for choice in value.get("choices", [])]
            if not choices:
                problems.append(SourceProblem(name, "submitted without a choice (skip it with 'Skip' instead)",
                                              item=item))
                continue
            if not all(isinstance(choice, str) for choice in choices):
                problems.append(SourceProblem(name, f"malformed choice {choices} (labels are strings)", item=item))
                continue
            if len(set(choices)) > 1:
                problems.append(SourceProblem(name, f"several choices {choices} where one label is expected",
                                              item=item))
                continue
            label = taxonomy.resolve(choices[0])
            if label is None:
                problems.append(SourceProblem(name, taxonomy.describe_unknown(choices[0]), item=item))
                continue
            try:
                at = _timestamp(annotation.get("updated_at") or annotation.get("created_at"))
            except ValueError:
                problems.append(SourceProblem(name, f"malformed updated_at "
                                                    f"{annotation.get('updated_at') or annotation.get('created_at')!r}",
                                              item=item))
                continue
            others = [r for r in results if r not in choices_results]
            events.append(LabelEvent(image_id=image_id, label=label, source=source, origin=f"{name} {item}",
                                     origin_file=name, source_digest=digest,
                                     annotator=_annotator(annotation.get("completed_by")), at=at,
                                     extra=json.dumps({"results": others}, sort_keys=True) if others else None))
    return events, problems


# --- any file, landing ----------------------------------------------------------------------------------------


def read_label_file(data: bytes, name: str, *, taxonomy: Taxonomy, images: ImageLookup,
                    source: str = "import") -> tuple[list[LabelEvent], list[SourceProblem]]:
    """By the name's extension: ``.csv`` as CSV; ``.json`` as COCO (an object with ``images``) or as a Label Studio
    export (a list of tasks). Anything else is one problem."""
    _check_source(source)
    extension = posixpath.splitext(name.lower())[1]
    if extension == ".csv":
        return read_csv_labels(data, name, taxonomy=taxonomy, images=images, source=source)
    if extension != ".json":
        return [], [SourceProblem(name, f"not a label file cv-dataops reads (.csv or .json, not "
                                        f"{extension or 'no extension'})")]
    document, failure = _json_document(data, name)
    if failure:
        return [], [failure]
    digest = content_digest(data)
    if isinstance(document, dict) and isinstance(document.get("images"), list):
        return _coco_events(document, name, digest, taxonomy, _lookup(images), source)
    if isinstance(document, list):
        return _label_studio_events(document, name, digest, taxonomy, _lookup(images), source)
    return [], [SourceProblem(name, "neither COCO (an object with an 'images' list) nor a Label Studio export (a "
                                    "list of tasks)")]


def landing_events(images: pd.DataFrame, taxonomy: Taxonomy) -> tuple[list[LabelEvent], list[SourceProblem]]:
    """The labels given at landing (the `images` table's ``label``) as events, one source digest per batch, so
    appending a batch's labels again adds nothing. A label the taxonomy does not know is a problem."""
    events: list[LabelEvent] = []
    problems: list[SourceProblem] = []
    labelled = images[images["label"].notna()] if "label" in images else images.iloc[0:0]
    for batch_id, rows in labelled.groupby("batch_id", sort=True):
        content = json.dumps(sorted(zip(rows["image_id"], rows["label"])))
        digest = content_digest(f"landing {batch_id}\n{content}".encode())
        for row in rows.sort_values("image_id").itertuples(index=False):
            where = f"landing {row.relative_path} (batch {batch_id})"
            label = taxonomy.resolve(row.label)
            if label is None:
                problems.append(SourceProblem("landing", taxonomy.describe_unknown(row.label), item=where))
                continue
            at = getattr(row, "ingested_at", None)
            events.append(LabelEvent(image_id=row.image_id, label=label, source="landing", origin=where,
                                     origin_file="landing", source_digest=digest,
                                     at=None if at is None or pd.isna(at) else pd.Timestamp(at).to_pydatetime()))
    return events, problems


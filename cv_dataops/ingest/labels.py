"""Labels given at landing: the ImageFolder folder name, a ``labels.csv`` at the landing root, or none.

A labels file never loses labels silently. A file that cannot be used at all (missing, not UTF-8, lacking the
``label`` column or the ``path``/``filename`` column) is refused with one line naming the file and the cause
(:class:`LabelsFileError`): ingesting the batch without its labels would store them as NULL for good. Everything
else is per row: a malformed row, a path that is not in the landing zone, or a path (or filename) listed twice
with different labels (neither label is applied) is a :class:`LabelProblem` with its line number, and every good
row is applied.

The file is read one row per line (a quoted field never runs over a line end), so one unbalanced quote spoils
only its own line, not every row after it; rows are parsed by the csv module in strict mode.
"""

from __future__ import annotations

import codecs
import csv
import posixpath
import re
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass

from cv_dataops.core.storage import Storage

LABELS_CSV = "labels.csv"
LABEL_MODES = ("imagefolder", "csv", "none")
PATH_COLUMNS = ("path", "filename")

_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


class LabelsFileError(ValueError):
    """The labels file cannot be used at all; the message is one line naming the file and the cause."""


class LabelsFileMissing(LabelsFileError, FileNotFoundError):
    """``--labels csv`` and no labels file at the landing root (it may still come: a later run tries again)."""


@dataclass(frozen=True)
class LabelProblem:
    """One row of the labels file that was not applied (or not fully): where it is and why."""

    file: str
    line: int
    problem: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Entry:
    column: str  # "path" or "filename"
    key: str
    label: str
    line: int


def decode_labels_file(data: bytes, name: str) -> str:
    """The text of a labels file: UTF-8 with or without a byte-order mark; anything else is refused in one line
    naming the first byte that is not UTF-8 (offset and line)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise LabelsFileError(f"{name} is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise LabelsFileError(
            f"{name} is not UTF-8: byte 0x{data[error.start]:02x} at offset {error.start} (line {line}) is not "
            f"valid UTF-8 (a latin-1 or Windows-1252 file?); save it as UTF-8") from None


def _normalised_path(text: str) -> str:
    path = text.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return posixpath.normpath(path).lstrip("/") if path else ""


def parse_labels_csv(text: str, name: str = LABELS_CSV) -> tuple[list[_Entry], list[LabelProblem]]:
    """The entries of a labels file and the problems of its rows. Raises :class:`LabelsFileError` when the header
    lacks the ``label`` column or both of ``path`` and ``filename`` (columns are matched ignoring case and
    surrounding spaces)."""
    lines = [(number, line) for number, line in enumerate(_LINES.findall(text), start=1) if line.strip()]
    if not lines:
        raise LabelsFileError(f"{name} is empty: it needs a header with a 'label' column and a 'path' or "
                              f"'filename' column")
    header_line, header_text = lines[0]
    try:
        header = [column.strip().lower() for column in next(csv.reader([header_text], strict=True))]
    except csv.Error as error:
        raise LabelsFileError(f"{name}: line {header_line}: the header is not valid CSV ({error})") from None
    if "label" not in header or not set(header) & set(PATH_COLUMNS):
        raise LabelsFileError(f"{name} needs a 'label' column and a 'path' or 'filename' column; its columns are "
                              f"{header}")
    position = {column: header.index(column) for column in ("label", *PATH_COLUMNS) if column in header}
    entries: list[_Entry] = []
    problems: list[LabelProblem] = []
    for number, line in lines[1:]:
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error as error:
            problems.append(LabelProblem(name, number, f"malformed row ({error}; an unbalanced quote?)"))
            continue
        if len(fields) > len(header) and any(field.strip() for field in fields[len(header):]):
            problems.append(LabelProblem(name, number, f"malformed row: {len(fields)} fields but the header has "
                                                       f"{len(header)} (an unquoted comma?)"))
            continue
        value = {column: (fields[index].strip() if index < len(fields) else "") for column, index in position.items()}
        keys = [(column, _normalised_path(value[column]) if column == "path" else value[column])
                for column in PATH_COLUMNS if value.get(column)]
        if not keys:
            problems.append(LabelProblem(name, number, "malformed row: no path or filename"))
            continue
        if not value["label"]:
            continue  # an empty label says the image is unlabelled
        entries.extend(_Entry(column, key, value["label"], number) for column, key in keys)
    return entries, problems


class LabelSource:
    """Labels given at landing: the ImageFolder folder name, a ``labels.csv`` at the landing root, or none.

    With ``csv``, :attr:`problems` lists the rows not applied; :meth:`batch_problems` adds the paths the landing
    zone does not hold."""

    def __init__(self, mode: str, landing: Storage | None = None):
        if mode not in LABEL_MODES:
            raise ValueError(f"labels must be one of {', '.join(LABEL_MODES)}, not {mode!r}")
        self.mode = mode
        self.by_path: dict[str, str] = {}
        self.by_name: dict[str, str] = {}
        self.problems: list[LabelProblem] = []
        self._entries: list[_Entry] = []
        self.landing = landing
        if mode == "csv":
            if landing is None:
                raise ValueError("csv labels need the landing zone")
            self._load_csv(landing)

    def _load_csv(self, landing: Storage) -> None:
        name = landing.uri_of(LABELS_CSV)
        try:
            data = landing.read_bytes(LABELS_CSV)
        except FileNotFoundError:
            raise LabelsFileMissing(f"--labels csv: there is no {LABELS_CSV} at {name}; add it, or choose "
                                  f"--labels imagefolder or none") from None
        entries, self.problems = parse_labels_csv(decode_labels_file(data, name), name)
        self._entries = entries
        for column, table in (("path", self.by_path), ("filename", self.by_name)):
            by_key: dict[str, list[_Entry]] = {}
            for entry in entries:
                if entry.column == column:
                    by_key.setdefault(entry.key, []).append(entry)
            for key, listed in by_key.items():
                labels = {entry.label for entry in listed}
                if len(labels) == 1:
                    table[key] = listed[0].label
                    continue
                where = ", ".join(f"{entry.label!r} (line {entry.line})" for entry in listed)
                first_conflict = next(entry.line for entry in listed if entry.label != listed[0].label)
                self.problems.append(LabelProblem(
                    name, first_conflict, f"{column} {key!r} is listed with different labels: {where}; neither "
                                          f"is applied"))
        self.problems.sort(key=lambda problem: problem.line)

    def is_sidecar(self, key: str) -> bool:
        return self.mode == "csv" and key == LABELS_CSV

    def label_for(self, key: str) -> str | None:
        if self.mode == "imagefolder":
            folder = posixpath.dirname(key)
            return posixpath.basename(folder) or None
        if self.mode == "csv":
            return self.by_path.get(key) or self.by_name.get(posixpath.basename(key))
        return None

    def batch_problems(self, batch_keys: Collection[str], landing_keys: Iterable[str] | None = None
                       ) -> list[LabelProblem]:
        """:attr:`problems` plus a problem for each row naming a path (or filename) that is neither in this batch
        nor anywhere in the landing zone (``landing_keys``, listed from the landing zone when not given, and only
        when some row matches nothing in the batch)."""
        if self.mode != "csv":
            return []
        names = {posixpath.basename(key) for key in batch_keys}
        outside = [entry for entry in self._entries
                   if (entry.key not in batch_keys if entry.column == "path" else entry.key not in names)]
        if not outside:
            return list(self.problems)
        if landing_keys is None:
            landing_keys = (info.key for info in self.landing.list()) if self.landing is not None else ()
        known = set(landing_keys)
        known_names = {posixpath.basename(key) for key in known}
        name = self.landing.uri_of(LABELS_CSV) if self.landing is not None else LABELS_CSV
        unknown = [LabelProblem(name, entry.line, f"unknown {entry.column}: {entry.key!r} is not in the landing zone")
                   for entry in outside
                   if (entry.key not in known if entry.column == "path" else entry.key not in known_names)]
        return sorted([*self.problems, *unknown], key=lambda problem: problem.line)

"""Every setting of cv-dataops, read and validated in one place.

This module is the only reader of ``CV_DATAOPS_*`` variables. :meth:`Settings.from_environment` reads them (the code
server's way); :meth:`Settings.build` takes the same values as arguments (the command line's way, which never
touches ``os.environ``). Each value is checked against what the code accepts (the valid keys of the thresholds come
from :class:`~cv_dataops.quality.measure.QualityThresholds`, those of curation from ``CurationResource``), and a
mistake becomes one line naming the setting and what it accepts, e.g.
``CV_DATAOPS_QUALITY_THRESHOLDS: unknown key 'drak'; valid keys: blurry, dark, ...``.

A mistake belongs to the stage it configures (:data:`STAGES`). Loading never raises: the code location still loads,
and only the assets of the stage whose setting is wrong fail, at run time, with that line
(:meth:`Settings.stage_error`). The command line asks for :meth:`Settings.check` instead, and stops before it
imports anything heavy.

Light on purpose (no dagster, numpy or pandas at import): the command line validates before loading the pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cv_dataops.ingest.labels import (
    LABEL_MODES,  # light: the standard library and core.storage only
)

PREFIX = "CV_DATAOPS_"
DEFAULT_DATA_ROOT = "data"
DEFAULT_LANDING = "data/landing"
DEFAULT_LABELS = "imagefolder"
DEFAULT_EMBEDDER = {"kind": "patch-kmeans"}
EMBEDDER_KINDS = ("patch-kmeans", "onnx")

# The stages a setting can belong to; a wrong setting fails the assets, checks and sensors of its stage only.
CATALOG, LANDING, QUALITY, EMBEDDING, CURATION = "catalog", "landing", "quality", "embedding", "curation"
LABELLING = "labels"  # the labels loop: labels, audited_labels, label_model, auto_labels, label_issues, review
DRIFT = "drift"  # the per-batch drift report and its alert
STAGES = (CATALOG, LANDING, QUALITY, EMBEDDING, CURATION, LABELLING, DRIFT)


@dataclass(frozen=True)
class Variable:
    name: str
    stage: str
    help: str


VARIABLES = {v.name: v for v in (
    Variable("CV_DATAOPS_DATA_ROOT", CATALOG, f"folder or s3://bucket/prefix holding the catalog "
                                              f"(default: {DEFAULT_DATA_ROOT})"),
    Variable("CV_DATAOPS_LANDING", LANDING, f"folder or s3://bucket/prefix images land in (default: {DEFAULT_LANDING})"),
    Variable("CV_DATAOPS_LABELS", LANDING, f"labels at landing: {', '.join(LABEL_MODES)} (default: {DEFAULT_LABELS})"),
    Variable("CV_DATAOPS_MIN_AGE_SECONDS", LANDING, "leave landed objects younger than this for the next tick "
                                                    "(default: 5)"),
    Variable("CV_DATAOPS_MAX_BYTES", LANDING, "refuse landed objects larger than this many bytes, unread, as "
                                              "too_large; no read holds more (default: 536870912, 512 MiB)"),
    Variable("CV_DATAOPS_READ_ATTEMPTS", LANDING, "tries per object within a run while its read fails for a reason "
                                                  "that may pass, before it is deferred (default: 3)"),
    Variable("CV_DATAOPS_READ_BACKOFF_SECONDS", LANDING, "pause after a failed try, doubled after each one, "
                                                         "jittered, at most 8 s (default: 0.5)"),
    Variable("CV_DATAOPS_RETRY_BATCHES", LANDING, "batches (runs) that try a deferred object before it is "
                                                  "quarantined as unreadable_after_retries (default: 5)"),
    Variable("CV_DATAOPS_RETRY_PAUSE_SECONDS", LANDING, "pause before a later run retries a deferred object the "
                                                        "second time, doubled after each one, up to 6 h (default: 60)"),
    Variable("CV_DATAOPS_WORKERS", QUALITY, "processes measuring image quality, and threads running "
                                                "the embedder on that many batches at once (default: min(4, CPUs))"),
    Variable("CV_DATAOPS_QUALITY_THRESHOLDS", QUALITY, 'JSON object overriding issue thresholds, e.g. {"dark": 0.25}'),
    Variable("CV_DATAOPS_EMBEDDER", EMBEDDING, 'JSON object naming the embedder, e.g. {"kind": "onnx", '
                                               '"path": "model.onnx", "input_size": [224, 224], "mean": [...], '
                                               '"std": [...]} (default: {"kind": "patch-kmeans"})'),
    Variable("CV_DATAOPS_CURATION", CURATION, 'JSON object of curation settings, e.g. {"budget": 0.25}'),
    Variable("CV_DATAOPS_LABELS_TAXONOMY", LABELLING, 'the classes: a JSON list, or {"classes": [...], "aliases": '
                                                      '{"automobile": "car"}} (default: open, every label as written)'),
    Variable("CV_DATAOPS_REVIEW", LABELLING, 'JSON object of the labels loop\'s settings, e.g. {"budget": 50, '
                                             '"target_precision": 0.98, "promotion_tolerance": 0.01}'),
    Variable("CV_DATAOPS_DRIFT", DRIFT, 'JSON object of the drift report\'s settings, e.g. {"alpha": 0.05, '
                                        '"webhook_url": "https://hooks.slack.com/services/..."}'),
)}


class ConfigError(ValueError):
    """A setting has a value the code cannot use; the message is one line naming the setting."""


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    """Validated settings. Build with :meth:`from_environment` or :meth:`build`; a value that failed validation is
    replaced by its default and its stage's error is kept in ``errors`` (stage -> one-line message)."""

    data_root: str = DEFAULT_DATA_ROOT
    landing: str = DEFAULT_LANDING
    labels: str = DEFAULT_LABELS
    min_age_seconds: float | None = None  # None: the landing resource's default (so for the next five)
    max_bytes: int | None = None
    read_attempts: int | None = None
    read_backoff_seconds: float | None = None
    retry_batches: int | None = None
    retry_pause_seconds: float | None = None
    workers: int = field(default_factory=_default_workers)
    quality_thresholds: Mapping[str, Any] = field(default_factory=dict)
    embedder: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_EMBEDDER))
    curation: Mapping[str, Any] = field(default_factory=dict)
    labels_taxonomy: Mapping[str, Any] = field(default_factory=dict)  # {"classes": [...], "aliases": {...}}; {}: open
    review: Mapping[str, Any] = field(default_factory=dict)
    drift: Mapping[str, Any] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)
    unknown_variables: tuple[str, ...] = ()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings in ``environ`` (default: this process's environment). Empty variables count as unset."""
        environ = os.environ if environ is None else environ
        raw = {name: environ[name] for name in VARIABLES if environ.get(name, "").strip()}
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name, text in raw.items():
            try:
                values[name] = _PARSERS[name](text)
            except ConfigError as error:
                errors.setdefault(VARIABLES[name].stage, f"{name}: {error}")
        unknown = tuple(sorted(n for n in environ if n.startswith(PREFIX) and n not in VARIABLES))
        return cls._validated(values, errors, unknown)

    @classmethod
    def build(cls, *, data_root: str | os.PathLike[str] | None = None, landing: str | os.PathLike[str] | None = None,
              labels: str | None = None, min_age_seconds: float | None = None, workers: int | None = None,
              quality_thresholds: Mapping[str, Any] | None = None, embedder: Mapping[str, Any] | None = None,
              curation: Mapping[str, Any] | None = None, max_bytes: int | None = None,
              read_attempts: int | None = None, read_backoff_seconds: float | None = None,
              retry_batches: int | None = None, retry_pause_seconds: float | None = None,
              labels_taxonomy: Mapping[str, Any] | list[str] | None = None,
              review: Mapping[str, Any] | None = None, drift: Mapping[str, Any] | None = None) -> Settings:
        """Settings from arguments only (no environment); unset arguments take the defaults."""
        given = {"CV_DATAOPS_DATA_ROOT": data_root, "CV_DATAOPS_LANDING": landing, "CV_DATAOPS_LABELS": labels,
                 "CV_DATAOPS_MIN_AGE_SECONDS": min_age_seconds, "CV_DATAOPS_WORKERS": workers,
                 "CV_DATAOPS_MAX_BYTES": max_bytes, "CV_DATAOPS_READ_ATTEMPTS": read_attempts,
                 "CV_DATAOPS_READ_BACKOFF_SECONDS": read_backoff_seconds, "CV_DATAOPS_RETRY_BATCHES": retry_batches,
                 "CV_DATAOPS_RETRY_PAUSE_SECONDS": retry_pause_seconds,
                 "CV_DATAOPS_QUALITY_THRESHOLDS": quality_thresholds, "CV_DATAOPS_EMBEDDER": embedder,
                 "CV_DATAOPS_CURATION": curation, "CV_DATAOPS_LABELS_TAXONOMY": labels_taxonomy,
                 "CV_DATAOPS_REVIEW": review, "CV_DATAOPS_DRIFT": drift}
        values = {name: os.fspath(v) if isinstance(v, os.PathLike) else v for name, v in given.items() if v is not None}
        return cls._validated(values, {}, ())

    def replace(self, **changes: Any) -> Settings:
        """These settings with some values replaced (validated as :meth:`build` validates them), e.g.
        ``replace(landing=..., data_root=...)``; an error about a replaced value is forgotten or found anew."""
        names = {f"CV_DATAOPS_{key.upper()}": value for key, value in changes.items()}
        unknown = [key for key, name in zip(changes, names) if name not in VARIABLES]
        if unknown:
            raise TypeError(f"unknown settings {unknown}; valid: {[f.name for f in _VALUE_FIELDS]}")
        values = {name: getattr(self, _FIELD_OF[name]) for name in VARIABLES}
        values.update({name: os.fspath(v) if isinstance(v, os.PathLike) else v for name, v in names.items()})
        errors = {stage: message for stage, message in self.errors.items() if message.split(":")[0] not in names}
        return self._validated(values, errors, self.unknown_variables, only=set(names))

    @classmethod
    def _validated(cls, values: dict[str, Any], errors: dict[str, str], unknown: tuple[str, ...],
                   only: set[str] | None = None) -> Settings:
        checked: dict[str, Any] = {}
        for name, value in values.items():
            if only is not None and name not in only:
                checked[_FIELD_OF[name]] = value
                continue
            stage = VARIABLES[name].stage
            try:
                checked[_FIELD_OF[name]] = _CHECKS[name](value)
            except ConfigError as error:
                errors.setdefault(stage, f"{name}: {error}")
        return cls(**checked, errors=dict(errors), unknown_variables=unknown)

    # -- asking about errors --------------------------------------------------------------------------------------

    def stage_error(self, stage: str) -> str | None:
        """The one-line error of ``stage``'s settings, or None when they are valid."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        return self.errors.get(stage)

    def check(self) -> Settings:
        """These settings, or :class:`ConfigError` with the first error (all of them, one per line, if several)."""
        if self.errors:
            raise ConfigError("\n".join(self.errors[stage] for stage in STAGES if stage in self.errors))
        return self

    def as_environment(self) -> dict[str, str]:
        """These settings as ``CV_DATAOPS_*`` variables, for a child process (a code server) that should load
        exactly them: the locations always, the others when they differ from the defaults."""
        defaults = Settings.build()
        environment = {}
        for name, attribute in _FIELD_OF.items():
            value = getattr(self, attribute)
            if name in ("CV_DATAOPS_DATA_ROOT", "CV_DATAOPS_LANDING", "CV_DATAOPS_LABELS") or \
                    value != getattr(defaults, attribute):
                if value is not None:
                    environment[name] = json.dumps(dict(value)) if isinstance(value, Mapping) else str(value)
        return environment

    # -- typed views the resources use ----------------------------------------------------------------------------

    def quality_threshold_values(self):
        """The :class:`~cv_dataops.quality.measure.QualityThresholds` in force (defaults when the setting is wrong)."""
        from cv_dataops.quality.measure import QualityThresholds

        return QualityThresholds(**self.quality_thresholds)


# ---------------------------------------------------------------------------------------------------------------
# Parsing (text from the environment) and checking (any value), one function per setting
# ---------------------------------------------------------------------------------------------------------------

def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"not valid JSON ({error.msg} at character {error.pos}); expected a JSON object") from None
    if not isinstance(value, dict):
        raise ConfigError(f"expected a JSON object, got {type(value).__name__} {text.strip()!r}")
    return value


def _number(text: str, kind: Callable[[str], Any]) -> Any:
    try:
        return kind(text.strip())
    except ValueError:
        raise ConfigError(f"expected {'an integer' if kind is int else 'a number'}, got {text.strip()!r}") from None


def _location(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"expected a folder or s3://bucket/prefix, got {value!r}")
    value = value.strip()
    if "://" in value and not value.startswith(("s3://", "file://")):
        raise ConfigError(f"unsupported location {value!r}: use a folder or s3://bucket/prefix")
    if value.startswith("s3://") and not value[len("s3://"):].split("/")[0]:
        raise ConfigError(f"no bucket in {value!r}: use s3://bucket/prefix")
    return value


def _labels(value: Any) -> str:
    if value not in LABEL_MODES:
        raise ConfigError(f"unknown value {value!r}; valid values: {', '.join(LABEL_MODES)}")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"expected a number of seconds >= 0, got {value!r}")
    return float(value)


def _workers(value: Any) -> int:
    return _whole_number(value, "processes")


def _whole_number(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"expected a whole number of {what} >= 1, got {value!r}")
    return value


def _unknown_keys(values: Mapping[str, Any], valid: list[str]) -> None:
    if not isinstance(values, Mapping):
        raise ConfigError(f"expected an object (mapping), got {type(values).__name__}")
    unknown = [key for key in values if key not in valid]
    if unknown:
        keys = ", ".join(repr(k) for k in unknown)
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {keys}; valid keys: {', '.join(sorted(valid))}")


def _quality_thresholds(values: Mapping[str, Any]) -> dict:
    from cv_dataops.quality.measure import QualityThresholds

    defaults = QualityThresholds().as_dict()  # every issue type's threshold, and unusable_issues
    _unknown_keys(values, list(defaults))
    for key, value in values.items():
        if isinstance(defaults[key], float) and (isinstance(value, bool) or not isinstance(value, int | float)
                                                 or not 0 <= value <= 1):
            raise ConfigError(f"{key} must be a score threshold between 0 and 1, got {value!r}")
    try:
        QualityThresholds(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error).splitlines()[0]) from None
    return dict(values)


def _embedder(spec: Mapping[str, Any]) -> dict:
    if not isinstance(spec, Mapping):
        raise ConfigError(f"expected an object (mapping), got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in EMBEDDER_KINDS:
        raise ConfigError(f"unknown kind {kind!r}; valid kinds: {', '.join(EMBEDDER_KINDS)}")
    import inspect

    from cv_dataops.embeddings import embedders

    if kind == "onnx":
        valid = ["kind", "path", *sorted(embedders._ONNX_KEYS)]
        _unknown_keys(spec, valid)
        missing = [key for key in ("path", "input_size", "mean", "std") if key not in spec]
        if missing:
            raise ConfigError(f"an onnx embedder needs {', '.join(missing)} (its model file and preprocessing)")
    else:
        options = [name for name, parameter in inspect.signature(embedders.PatchKMeansEmbedder.fit).parameters.items()
                   if parameter.kind is inspect.Parameter.KEYWORD_ONLY]
        _unknown_keys(spec, ["kind", *options])
        for key in options:
            if key in spec and (isinstance(spec[key], bool) or not isinstance(spec[key], int | float)):
                raise ConfigError(f"{key} must be a number, got {spec[key]!r}")
    return dict(spec)


def _resource_settings(values: Mapping[str, Any], keys: list[str], validate: Callable[[], Any]) -> dict:
    """A JSON setting whose keys are a resource's fields: unknown keys, then the resource's own validation."""
    _unknown_keys(values, keys)
    _checked(validate)
    return dict(values)


def _curation(values: Mapping[str, Any]) -> dict:
    from cv_dataops.resources import CurationResource

    return _resource_settings(values, [name for name in CurationResource.model_fields if name != "settings_error"],
                              lambda: CurationResource(**values).settings())


def _checked(build: Callable[[], Any]) -> None:
    """Run a resource's own validation; its first complaint becomes the setting's one line."""
    from pydantic import ValidationError

    try:
        build()
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise ConfigError(f"{where}: {problem['msg']}, got {problem.get('input')!r}") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error).splitlines()[0]) from None


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"not valid JSON ({error.msg} at character {error.pos}); expected a JSON list or "
                          f"object") from None


def _labels_taxonomy(value: Any) -> dict:
    """Stored as ``{"classes": [...], "aliases": {...}}`` (a mapping, like every JSON setting)."""
    from cv_dataops.labels.taxonomy import Taxonomy, TaxonomyError

    try:
        taxonomy = Taxonomy.from_config(value)
    except TaxonomyError as error:
        raise ConfigError(str(error).splitlines()[0].removeprefix("taxonomy: ")) from None
    except TypeError as error:
        raise ConfigError(f"expected a list of classes or {{'classes': [...], 'aliases': {{...}}}}: {error}") from None
    return {"classes": list(taxonomy.classes), "aliases": dict(taxonomy.aliases)} if (
        taxonomy.classes or taxonomy.aliases) else {}


def _review(values: Mapping[str, Any]) -> dict:
    from cv_dataops.resources import LabelsResource

    return _resource_settings(values, LabelsResource.review_keys(), lambda: LabelsResource(**values).check())


def _drift(values: Mapping[str, Any]) -> dict:
    from cv_dataops.resources import DriftResource

    return _resource_settings(values, DriftResource.setting_keys(), lambda: DriftResource(**values).check())


_PARSERS: dict[str, Callable[[str], Any]] = {
    "CV_DATAOPS_DATA_ROOT": str, "CV_DATAOPS_LANDING": str, "CV_DATAOPS_LABELS": str.strip,
    "CV_DATAOPS_MIN_AGE_SECONDS": lambda text: _number(text, float),
    "CV_DATAOPS_WORKERS": lambda text: _number(text, int),
    "CV_DATAOPS_MAX_BYTES": lambda text: _number(text, int),
    "CV_DATAOPS_READ_ATTEMPTS": lambda text: _number(text, int),
    "CV_DATAOPS_READ_BACKOFF_SECONDS": lambda text: _number(text, float),
    "CV_DATAOPS_RETRY_BATCHES": lambda text: _number(text, int),
    "CV_DATAOPS_RETRY_PAUSE_SECONDS": lambda text: _number(text, float),
    "CV_DATAOPS_QUALITY_THRESHOLDS": _json_object, "CV_DATAOPS_EMBEDDER": _json_object,
    "CV_DATAOPS_CURATION": _json_object, "CV_DATAOPS_LABELS_TAXONOMY": _json_value,
    "CV_DATAOPS_REVIEW": _json_object, "CV_DATAOPS_DRIFT": _json_object,
}
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "CV_DATAOPS_DATA_ROOT": _location, "CV_DATAOPS_LANDING": _location, "CV_DATAOPS_LABELS": _labels,
    "CV_DATAOPS_MIN_AGE_SECONDS": _seconds, "CV_DATAOPS_WORKERS": _workers,
    "CV_DATAOPS_MAX_BYTES": lambda value: _whole_number(value, "bytes"),
    "CV_DATAOPS_READ_ATTEMPTS": lambda value: _whole_number(value, "tries"),
    "CV_DATAOPS_READ_BACKOFF_SECONDS": _seconds,
    "CV_DATAOPS_RETRY_BATCHES": lambda value: _whole_number(value, "batches"),
    "CV_DATAOPS_RETRY_PAUSE_SECONDS": _seconds,
    "CV_DATAOPS_QUALITY_THRESHOLDS": _quality_thresholds, "CV_DATAOPS_EMBEDDER": _embedder,
    "CV_DATAOPS_CURATION": _curation, "CV_DATAOPS_LABELS_TAXONOMY": _labels_taxonomy,
    "CV_DATAOPS_REVIEW": _review, "CV_DATAOPS_DRIFT": _drift,
}
_FIELD_OF = {name: name[len(PREFIX):].lower() for name in VARIABLES}  # CV_DATAOPS_DATA_ROOT -> data_root
_VALUE_FIELDS = [f for f in dataclasses.fields(Settings) if f.name in _FIELD_OF.values()]


def default_dagster_home(data_root: str, environ: Mapping[str, str] | None = None) -> Path:
    """DAGSTER_HOME when one is set, else beside a local catalog (``<data_root>/dagster_home``), or
    ``./.dagster_home`` for an S3 one."""
    environ = os.environ if environ is None else environ
    if environ.get("DAGSTER_HOME"):
        return Path(environ["DAGSTER_HOME"])
    return Path(data_root) / "dagster_home" if "://" not in data_root else Path(".dagster_home")

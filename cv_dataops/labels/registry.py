"""The label-model registry: every trained model, versioned under the data root, and which one is promoted.

Layout under the registry's storage (a data root folder or an ``s3://`` prefix, through
:func:`cv_dataops.core.storage.open_storage`; every write atomic):

    <version>/model.pkl        the pickled scikit-learn-style model
    <version>/metadata.json    accuracy, calibration error, classes, embedder and labels versions, trained_at, the
                               library versions it was pickled with and the pickle's sha256
    promoted.json              the promoted version, why, and when (replaced atomically on each promotion)
    promotions/<n>.json        every promotion ever made, in order (append-only)

Versions are ``v0001``, ``v0002``, ...: a save claims the next number with a create-if-absent write, so two
concurrent runs never share one. A version is listed once its metadata is written (after its model), so a
crashed save leaves at most an unlisted number. Pickles only load under the scikit-learn version that wrote them
(a pickle across versions may load and then predict wrongly): a mismatch is refused with a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import platform
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cv_dataops.core.storage import Storage, open_storage

REGISTRY_FOLDER = "models/label_model"  # under the data root
VERSION = re.compile(r"^v(\d{4,})$")
MODEL, METADATA, PROMOTED, PROMOTIONS = "model.pkl", "metadata.json", "promoted.json", "promotions/"


class RegistryError(RuntimeError):
    """A registry request that cannot be met; the message is one line meant for the user."""


@dataclass(frozen=True)
class ModelVersion:
    version: str
    metadata: dict


@dataclass(frozen=True)
class Promotion:
    version: str
    reason: str
    at: str
    previous: str | None


def _library_versions() -> dict[str, str]:
    import numpy
    import sklearn

    return {"sklearn_version": sklearn.__version__, "numpy_version": numpy.__version__,
            "python_version": platform.python_version()}


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class ModelRegistry:
    """Label models under ``storage`` (a :class:`Storage` or a URI; e.g. ``<data root>/models/label_model``)."""

    def __init__(self, storage: Storage | str):
        self.storage = open_storage(storage) if isinstance(storage, str) else storage

    def __repr__(self) -> str:
        return f"ModelRegistry({self.storage.uri!r})"

    def _versions(self) -> list[str]:
        found = {info.key.split("/", 1)[0] for info in self.storage.list() if info.unsafe_reason is None
                 and info.key.endswith("/" + METADATA) and info.key.count("/") == 1}
        return sorted((v for v in found if VERSION.match(v)), key=lambda v: int(VERSION.match(v).group(1)))

    def _next_number(self) -> int:
        numbers = [int(m.group(1)) for info in self.storage.list() if info.unsafe_reason is None
                   and (m := VERSION.match(info.key.split("/", 1)[0]))]
        return max(numbers, default=0) + 1

    def save(self, model: Any, metadata: dict) -> str:
        """Store ``model`` with ``metadata`` (JSON values: accuracy, calibration error, embedder_version,
        labels_version, ...); ``classes`` (from ``model.classes_``), ``trained_at`` (now, unless given), the
        library versions and the pickle's sha256 are added. Returns the new version."""
        data = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        record = dict(metadata)
        if hasattr(model, "classes_"):
            record.setdefault("classes", list(model.classes_))
        record.setdefault("trained_at", datetime.now(UTC).isoformat(timespec="seconds"))
        record.update(_library_versions(), model_class=f"{type(model).__module__}.{type(model).__qualname__}",
                      model_sha256=hashlib.sha256(data).hexdigest(), model_bytes=len(data))
        try:
            text = json.dumps(record, default=_plain, indent=2, sort_keys=True)
        except TypeError as error:
            raise RegistryError(f"model metadata must be JSON values: {error}") from None
        number = self._next_number()
        while not self.storage.create_bytes(f"v{number:04d}/{MODEL}", data):
            number += 1
        version = f"v{number:04d}"
        self.storage.write_bytes(f"{version}/{METADATA}", (text + "\n").encode())
        return version

    def list(self) -> list[ModelVersion]:
        """Every saved version, oldest first, with its metadata."""
        return [ModelVersion(v, self.metadata(v)) for v in self._versions()]

    def metadata(self, version: str) -> dict:
        self._check(version)
        return json.loads(self.storage.read_bytes(f"{version}/{METADATA}"))

    def _check(self, version: str) -> None:
        if not isinstance(version, str) or not VERSION.match(version) or \
                not self.storage.exists(f"{version}/{METADATA}"):
            known = self._versions()
            raise RegistryError(f"no label model version {version!r} in {self.storage.uri} "
                                f"(versions: {', '.join(known) if known else 'none'})")

    def load(self, version: str) -> Any:
        """The model saved as ``version``; refused when this environment's scikit-learn differs from the one
        that pickled it, or the pickle is not the one saved."""
        metadata = self.metadata(version)
        current = _library_versions()["sklearn_version"]
        if metadata.get("sklearn_version") != current:
            raise RegistryError(f"label model {version} was saved with scikit-learn {metadata.get('sklearn_version')}"
                                f", this environment has {current}: retrain it, or install scikit-learn "
                                f"{metadata.get('sklearn_version')} to load it")
        data = self.storage.read_bytes(f"{version}/{MODEL}")
        if hashlib.sha256(data).hexdigest() != metadata.get("model_sha256"):
            raise RegistryError(f"label model {version}'s file {self.storage.uri_of(version + '/' + MODEL)} is not "
                                f"the one saved (sha256 differs): retrain it")
        return pickle.loads(data)

    def promote(self, version: str, reason: str) -> Promotion:
        """Make ``version`` the promoted model, recording ``reason``; every promotion is kept in ``promotions/``."""
        self._check(version)
        if not reason or not reason.strip():
            raise RegistryError("a promotion needs a reason")
        current = self.promoted()
        record = Promotion(version=version, reason=reason.strip(), at=datetime.now(UTC).isoformat(timespec="seconds"),
                           previous=current.version if current else None)
        text = (json.dumps(record.__dict__, indent=2) + "\n").encode()
        number = len(self.promotions()) + 1
        while not self.storage.create_bytes(f"{PROMOTIONS}{number:06d}.json", text):
            number += 1
        self.storage.write_bytes(PROMOTED, text)
        return record

    def promoted(self) -> ModelVersion | None:
        """The promoted version with its metadata, or None before the first promotion."""
        if not self.storage.exists(PROMOTED):
            return None
        version = json.loads(self.storage.read_bytes(PROMOTED))["version"]
        return ModelVersion(version, self.metadata(version))

    def promotions(self) -> list[Promotion]:
        """Every promotion, oldest first."""
        keys = sorted(info.key for info in self.storage.list(PROMOTIONS) if info.unsafe_reason is None
                      and info.key.endswith(".json"))
        return [Promotion(**json.loads(self.storage.read_bytes(key))) for key in keys]

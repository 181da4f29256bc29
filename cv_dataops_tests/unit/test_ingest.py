"""Safe decoding: every awkward input lands in the right table with the right reason, and nothing crashes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from PIL import Image

from cv_dataops.core.storage import LocalStorage
from cv_dataops.ingest.batch import (
    ImageFacts,
    IngestLimits,
    LabelSource,
    Refusal,
    ingest_batch,
    inspect_image,
)
from cv_dataops.ingest.landing import BatchLedger
from cv_dataops.ingest.tables import IMAGES, OBJECTS, QUARANTINE
from cv_dataops_tests.conftest import bad_input_corpus, encode, photo, write_files


def _ingest(landing_root, data_root, labels="imagefolder", known=frozenset()):
    landing, data = LocalStorage(landing_root), LocalStorage(data_root)
    ledger = BatchLedger(data)
    (manifest,) = ledger.plan(landing)
    return manifest, ingest_batch(manifest, landing, known_image_ids=known, labels=LabelSource(labels, landing))


def test_bad_input_corpus_each_object_gets_its_outcome(tmp_path):
    expected = bad_input_corpus(tmp_path / "landing", tmp_path / "outside")
    manifest, result = _ingest(tmp_path / "landing", tmp_path / "data")
    ledger = {row["relative_path"]: row for row in result.objects.to_pylist()}
    assert set(ledger) == set(expected)  # every landed object accounted for, once
    quarantine = {row["relative_path"]: row for row in result.quarantine.to_pylist()}
    images = {row["relative_path"]: row for row in result.images.to_pylist()}
    for key, outcome in expected.items():
        if outcome == "image":
            assert ledger[key]["outcome"] == "image" and key in images, key
        elif outcome == "duplicate":
            assert ledger[key]["outcome"] == "duplicate" and key not in images, key
        else:
            assert ledger[key]["outcome"] == "quarantined", key
            assert quarantine[key]["reason"] == outcome, (key, quarantine[key])
            assert quarantine[key]["detail"]
    assert result.images.schema.equals(IMAGES.arrow_schema)
    assert result.quarantine.schema.equals(QUARANTINE.arrow_schema)
    assert result.objects.schema.equals(OBJECTS.arrow_schema)


def test_modes_and_exif_are_described(tmp_path):
    bad_input_corpus(tmp_path / "landing", tmp_path / "outside")
    _, result = _ingest(tmp_path / "landing", tmp_path / "data")
    images = {row["relative_path"]: row for row in result.images.to_pylist()}
    assert images["modes/cmyk.jpg"]["mode"] == "CMYK"
    assert images["modes/gray16.png"]["mode"].startswith("I")
    assert images["modes/palette_alpha.png"]["mode"] == "P" and images["modes/palette_alpha.png"]["has_alpha"]
    assert images["modes/animated.gif"]["frames"] == 2
    rotated = images["modes/rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (48, 64)  # stored 64x48, EXIF orientation 6 turns it
    assert rotated["exif_orientation"] == 6
    assert rotated["camera_make"] == "Acme" and rotated["camera_model"] == "Cam 3000"
    assert rotated["captured_at"] == datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert images["good/ünïcode name with spaces.jpg"]["uri"].endswith("good/ünïcode name with spaces.jpg")
    assert images["modes/cmyk.jpg"]["label"] == "modes"  # ImageFolder: the folder name


def test_image_id_is_sha256_of_bytes_and_duplicates_keep_both_uris(tmp_path):
    import hashlib

    data = encode(photo(11), "JPEG")
    write_files(tmp_path / "landing", {"a/one.jpg": data, "b/two.jpg": data})
    _, result = _ingest(tmp_path / "landing", tmp_path / "data")
    assert result.images.num_rows == 1
    (image_id,) = result.images.column("image_id").to_pylist()
    assert image_id == hashlib.sha256(data).hexdigest()
    ledger = result.objects.to_pylist()
    assert sorted(r["outcome"] for r in ledger) == ["duplicate", "image"]
    assert {r["image_id"] for r in ledger} == {image_id}
    assert all(r["uri"].endswith(("a/one.jpg", "b/two.jpg")) for r in ledger)


def test_images_already_in_the_catalog_are_duplicates(tmp_path):
    import hashlib

    data = encode(photo(12), "PNG")
    write_files(tmp_path / "landing", {"x.png": data})
    _, result = _ingest(tmp_path / "landing", tmp_path / "data", known={hashlib.sha256(data).hexdigest()})
    assert result.images.num_rows == 0 and result.objects.column("outcome").to_pylist() == ["duplicate"]


def test_known_ids_can_be_a_lookup_asked_only_about_the_batch(tmp_path):
    import hashlib

    known, other = encode(photo(12), "PNG"), encode(photo(13), "PNG")
    write_files(tmp_path / "landing", {"x.png": known, "y.png": other, "junk.png": b"junk"})
    asked = []

    def lookup(ids):
        asked.append(sorted(ids))
        return {hashlib.sha256(known).hexdigest()}

    _, result = _ingest(tmp_path / "landing", tmp_path / "data", known=lookup)
    assert asked == [sorted([hashlib.sha256(known).hexdigest(), hashlib.sha256(other).hexdigest()])]
    assert dict(zip(result.objects.column("relative_path").to_pylist(), result.objects.column("outcome").to_pylist())) \
        == {"x.png": "duplicate", "y.png": "image", "junk.png": "quarantined"}


def test_csv_labels_and_the_sidecar_is_accounted_for(tmp_path):
    write_files(tmp_path / "landing", {
        "img/a.jpg": encode(photo(1), "JPEG"), "img/b.jpg": encode(photo(2), "JPEG"),
        "labels.csv": b"path,label\nimg/a.jpg,=cmd|' /C calc'!A0\nimg/b.jpg,dog\n"})
    _, result = _ingest(tmp_path / "landing", tmp_path / "data", labels="csv")
    labels = {r["relative_path"]: r["label"] for r in result.images.to_pylist()}
    assert labels == {"img/a.jpg": "=cmd|' /C calc'!A0", "img/b.jpg": "dog"}
    outcomes = {r["relative_path"]: r["outcome"] for r in result.objects.to_pylist()}
    assert outcomes["labels.csv"] == "sidecar"


def test_csv_labels_without_the_file_is_a_clear_error(tmp_path):
    (tmp_path / "landing").mkdir()
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        LabelSource("csv", LocalStorage(tmp_path / "landing"))
    with pytest.raises(ValueError, match="labels must be one of"):
        LabelSource("folders")


def test_limits_are_configuration():
    data = encode(photo(3, (64, 48)), "PNG")
    assert isinstance(inspect_image(data), ImageFacts)
    refused = inspect_image(data, IngestLimits(max_pixels=1000))
    assert isinstance(refused, Refusal) and refused.reason == "too_many_pixels"
    refused = inspect_image(data, IngestLimits(min_side=100))
    assert isinstance(refused, Refusal) and refused.reason == "too_small"
    assert inspect_image(data, IngestLimits(formats=frozenset({"JPEG"}))).reason == "unsupported_format"


def test_a_decompression_bomb_is_never_decoded(monkeypatch):
    bomb = encode(Image.new("1", (12000, 12000)), "PNG")

    def refuse_to_decode(self, *args, **kwargs):
        raise AssertionError("the bomb's pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", refuse_to_decode)
    result = inspect_image(bomb, IngestLimits(max_pixels=10_000_000))
    assert isinstance(result, Refusal) and result.reason == "too_many_pixels"


def test_heif_signature_is_unsupported_not_garbage():
    heic_header = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    assert inspect_image(heic_header).reason == "unsupported_format"


def test_cifar_sample_ingests_cleanly_with_labels(tmp_path, cifar_sample):
    landing = LocalStorage(cifar_sample / "test")
    (manifest,) = BatchLedger(LocalStorage(tmp_path / "data")).plan(landing)
    result = ingest_batch(manifest, landing, labels=LabelSource("imagefolder"))
    # Real photos: every file is an image (CIFAR-10 has a few byte-identical JPEGs; they become duplicates)
    assert result.quarantine.num_rows == 0
    assert result.images.num_rows + result.duplicates == len(manifest.objects) == 1000
    assert set(result.images.column("label").to_pylist()) == {
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}
    assert set(zip(result.images.column("width").to_pylist(), result.images.column("height").to_pylist())) == {(32, 32)}

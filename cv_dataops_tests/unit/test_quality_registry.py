"""The issue registry (cv_dataops.quality.issues): every issue type is complete, and one registered anywhere shows up
in measure(), the thresholds, the flags and the quality version without editing anything else."""

from __future__ import annotations

import contextlib
import dataclasses
import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cv_dataops.quality import measure as q
from cv_dataops.quality.issues import (
    IssueType,
    column,
    issue_names,
    issue_types,
    register,
    unregister,
)
from cv_dataops.quality.tables import QUALITY

skdata = pytest.importorskip("skimage.data", reason="scikit-image provides the real sample photos")

BUILTIN = ("dark", "light", "blurry", "low_information", "odd_aspect_ratio", "odd_size", "grayscale")


def encode(image: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def real_images() -> dict[str, bytes]:
    """Real photos (colour and gray) and real photos with issues: dark, blurred, stretched, gray, tiny."""
    photos = {name: Image.fromarray(getattr(skdata, name)()) for name in ("astronaut", "coffee", "chelsea", "camera")}
    astronaut = photos["astronaut"].convert("RGB")
    files = {f"{name}.jpg": encode(image.convert("RGB") if image.mode != "L" else image, "JPEG", quality=90)
             for name, image in photos.items()}
    files.update({
        "dark.png": encode(Image.fromarray((np.asarray(astronaut) * 0.1).astype(np.uint8))),
        "blurred.jpg": encode(astronaut.filter(ImageFilter.GaussianBlur(4)), "JPEG", quality=90),
        "banner.png": encode(astronaut.resize((900, 60))),
        "gray_as_rgb.jpg": encode(astronaut.convert("L").convert("RGB"), "JPEG", quality=90),
        "tiny.png": encode(astronaut.resize((12, 12))),
        "black.png": encode(Image.new("RGB", (64, 48))),
    })
    return files


@pytest.fixture(scope="module")
def measured(real_images) -> dict[str, np.ndarray]:
    results = [q.measure(data) for data in real_images.values()]
    return {name: np.array([r[name] for r in results], dtype=np.float64)
            for name in results[0] if name.endswith("_score") or name in ("width", "height")}


def test_the_built_in_issue_types_are_registered_in_column_order():
    assert issue_names() == BUILTIN == q.ISSUE_TYPES
    assert q.SCORE_COLUMNS == tuple(f"{name}_score" for name in BUILTIN if name != "odd_size")


def test_every_issue_type_has_a_meaning_a_default_threshold_and_a_score_in_unit_range(real_images, measured):
    defaults = q.QualityThresholds().as_dict()
    catalog = q.catalog_scores(measured)
    for issue in issue_types():
        assert issue.meaning and issue.meaning[0].islower() and not issue.meaning.endswith("."), issue.name
        assert 0 < issue.threshold < 1 and defaults[issue.name] == issue.threshold, issue.name
        scores = measured.get(f"{issue.name}_score") if issue.score is not None else catalog[f"{issue.name}_score"]
        assert scores is not None and len(scores) == len(real_images), issue.name
        assert np.all((scores >= 0) & (scores <= 1)), (issue.name, scores)
        # The table describes it with its meaning.
        description = {c.name: c.description for c in QUALITY.columns}[f"{issue.name}_score"]
        assert issue.meaning in description
        assert f"is_{issue.name}" in QUALITY.column_names
    assert defaults["unusable_issues"] == [issue.name for issue in issue_types() if issue.unusable]


def test_the_issues_with_images_showing_them_are_flagged(real_images, measured):
    flags = q.flag_issues(measured)
    flagged = {issue: {name for name, hit in zip(real_images, flags[f"is_{issue}"]) if hit} for issue in BUILTIN}
    assert {"dark.png", "black.png"} <= flagged["dark"]
    assert "blurred.jpg" in flagged["blurry"]
    assert "banner.png" in flagged["odd_aspect_ratio"]
    assert {"camera.jpg", "gray_as_rgb.jpg"} <= flagged["grayscale"]
    assert "tiny.png" in flagged["odd_size"]
    assert not any("astronaut.jpg" in names or "coffee.jpg" in names for names in flagged.values())


# A per-image issue type and a catalog-relative one, registered by the tests below and removed after.

def _small_score(statistics) -> float:
    return min(1.0, min(statistics.width, statistics.height) / 64.0)


def _narrow_score(rows, catalog) -> np.ndarray:
    widths = column(rows, "width")
    reference = widths if catalog is None else column(catalog, "width")
    return np.minimum(1.0, widths / np.median(reference))


@contextlib.contextmanager
def extra_issue_types():
    """Register a per-image issue type ("small") and a catalog-relative one ("narrow"); remove them after."""
    added = []
    try:
        added.append(register(IssueType(name="small", meaning="fewer than 64 pixels on a side", threshold=0.5,
                                        unusable=True, score=_small_score)))
        added.append(register(IssueType(name="narrow", meaning="narrower than half the catalog's median width",
                                        threshold=0.5, unusable=False, catalog_score=_narrow_score,
                                        catalog_columns=("width",))))
        yield
    finally:
        for issue in added:
            unregister(issue.name)


def test_a_registered_issue_type_appears_in_measure_thresholds_flags_and_version(real_images):
    before_version = q.quality_version(q.QualityThresholds())
    with extra_issue_types():
        _check_the_extra_issue_types(real_images)
        assert q.quality_version(q.QualityThresholds()) != before_version  # its threshold is a setting too
    # Removed, it is gone everywhere.
    assert issue_names() == BUILTIN and q.ISSUE_TYPES == BUILTIN
    assert "small" not in q.QualityThresholds().as_dict() and "small_score" not in q.measure(real_images["tiny.png"])
    with pytest.raises(ValueError, match=r"unknown issue types \['small'\]"):
        q.QualityThresholds(small=0.5)


def _check_the_extra_issue_types(real_images):
    assert q.ISSUE_TYPES == (*BUILTIN, "small", "narrow")
    assert "small_score" in q.SCORE_COLUMNS and "small_score" in q.MEASURE_COLUMNS

    results = [q.measure(data) for data in real_images.values()]
    assert set(results[0]) == set(q.MEASURE_COLUMNS)
    rows = {name: np.array([r[name] for r in results], dtype=np.float64)
            for name in results[0] if name.endswith("_score") or name in ("width", "height")}
    tiny = list(real_images).index("tiny.png")
    assert rows["small_score"][tiny] == pytest.approx(12 / 64)

    defaults = q.QualityThresholds()
    assert defaults.small == 0.5 and defaults.narrow == 0.5
    assert "small" in defaults.unusable_issues and "narrow" not in defaults.unusable_issues
    assert defaults.as_dict()["small"] == 0.5
    assert q.QualityThresholds(small=0.1).small == 0.1

    flags = q.flag_issues(rows, defaults)  # narrow_score absent: scored against the rows themselves
    assert flags["is_small"].tolist() == (rows["small_score"] < 0.5).tolist() and flags["is_small"][tiny]
    assert flags["is_narrow"][tiny] and flags["is_unusable"][tiny]
    only_narrow = q.flag_issues(rows, q.QualityThresholds(unusable_issues=("narrow",)))
    assert only_narrow["is_unusable"].tolist() == flags["is_narrow"].tolist()

    # Against a catalog of wide images, every row is narrow.
    assert "width" in q.catalog_columns()
    against = q.catalog_scores(rows, {"width": np.full(10, 10_000.0), "height": np.full(10, 10_000.0)})
    assert set(against) == {"odd_size_score", "narrow_score"} and (against["narrow_score"] < 0.5).all()


def test_issue_types_are_checked_when_registered():
    with pytest.raises(ValueError, match="exactly one"):
        IssueType(name="both", meaning="x", threshold=0.5, unusable=False, score=_small_score,
                  catalog_score=_narrow_score)
    with pytest.raises(ValueError, match="exactly one"):
        IssueType(name="neither", meaning="x", threshold=0.5, unusable=False)
    with pytest.raises(ValueError, match="identifier"):
        IssueType(name="not a name", meaning="x", threshold=0.5, unusable=False, score=_small_score)
    with pytest.raises(ValueError, match="already registered"):
        register(IssueType(name="dark", meaning="x", threshold=0.5, unusable=False, score=_small_score))
    with pytest.raises(ValueError, match="unusable_threshold must not exceed threshold"):
        IssueType(name="odd", meaning="x", threshold=0.2, unusable=True, unusable_threshold=0.5, score=_small_score)
    assert issue_names() == BUILTIN


def test_an_issue_types_unusable_threshold_is_a_setting_and_stricter_than_its_flag(real_images):
    before = q.QualityThresholds()
    issue = register(IssueType(name="small", meaning="fewer than 64 pixels on a side", threshold=0.5,
                               unusable=True, unusable_threshold=0.1, score=_small_score))
    try:
        defaults = q.QualityThresholds()
        assert defaults.as_dict()["small_unusable"] == 0.1 and defaults.small_unusable == 0.1
        assert q.quality_version(defaults) != q.quality_version(before)
        rows = {"small_score": np.array([0.05, 0.3, 0.9]), **{f"{n}_score": np.ones(3) for n in BUILTIN}}
        flags = q.flag_issues(rows, defaults)
        assert flags["is_small"].tolist() == [True, True, False]   # flagged: worth a look
        assert flags["is_unusable"].tolist() == [True, False, False]  # unusable: only below 0.1
        assert flags["unusable_reason"].tolist() == ["small", None, None]
        assert q.flag_issues(rows, q.QualityThresholds(small_unusable=0.5))["is_unusable"].tolist() == [
            True, True, False]
    finally:
        unregister(issue.name)


def test_thresholds_reject_bad_values_naming_the_known_issue_types():
    with pytest.raises(ValueError, match=r"unknown issue types \['drak'\].*known: \['dark'"):
        q.QualityThresholds(drak=0.5)
    with pytest.raises(ValueError, match="threshold dark must be a finite number"):
        q.QualityThresholds(dark=float("nan"))
    assert dataclasses.replace(q.QualityThresholds(), dark=0.4) == q.QualityThresholds({"dark": 0.4})

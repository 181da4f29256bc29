"""image_quality through Dagster: tables, GX suite and its validation page, WARN and blocking ERROR paths (the
duplicates assets are tested in test_duplicates_assets.py)."""

from __future__ import annotations

import dagster as dg
from PIL import Image, ImageEnhance, ImageFilter

from cv_dataops.core.catalog import Catalog
from cv_dataops.core.storage import LocalStorage
from cv_dataops.defs.duplicates import checks as duplicates_checks
from cv_dataops.defs.duplicates.assets import image_duplicates
from cv_dataops.defs.ingest import checks as ingestion_checks
from cv_dataops.defs.ingest.assets import raw_images
from cv_dataops.defs.quality import checks as quality_checks
from cv_dataops.defs.quality.assets import image_quality
from cv_dataops.defs.shared.partitions import batch_partitions
from cv_dataops.ingest.landing import BatchLedger
from cv_dataops.resources import build_resources
from cv_dataops_tests.conftest import encode, write_files

PER_BATCH = [raw_images, image_quality, *[getattr(ingestion_checks, n) for n in dir(ingestion_checks)
                                          if isinstance(getattr(ingestion_checks, n), dg.AssetChecksDefinition)],
             *[getattr(quality_checks, n) for n in ("quality_expectations", "quality_issue_rates",
                                                    "quality_batch_usable", "quality_every_image_measured")]]


def real_photo(index: int, size=(320, 240)) -> Image.Image:
    from skimage import data

    source = [data.astronaut, data.coffee, data.chelsea, data.rocket, data.immunohistochemistry][index % 5]()
    image = Image.fromarray(source[..., :3])
    offset = (index // 5) * 17
    return image.crop((offset, offset, image.width - offset, image.height - offset)).resize(size)


def _land_and_plan(tmp_path, files, instance):
    write_files(tmp_path / "landing", files)
    batches = BatchLedger(LocalStorage(tmp_path / "data")).plan(LocalStorage(tmp_path / "landing"))
    instance.add_dynamic_partitions(batch_partitions.name, [b.batch_id for b in batches])
    return batches[0].batch_id


def _resources(tmp_path, **quality):
    resources = build_resources(landing=str(tmp_path / "landing"), data_root=str(tmp_path / "data"))
    if quality:
        from cv_dataops.resources import QualityResource

        resources["quality"] = QualityResource(**quality)
    return resources


def _checks(result):
    return {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}


def test_quality_flags_known_issues_and_passes_its_suite(tmp_path):
    photo = real_photo(0)
    files = {f"ok/{i}.jpg": encode(real_photo(i), "JPEG", quality=90) for i in range(1, 9)}
    files.update({
        "bad/black.png": encode(Image.new("RGB", (320, 240)), "PNG"),
        "bad/blurred.jpg": encode(photo.filter(ImageFilter.GaussianBlur(6)), "JPEG", quality=90),
        "bad/gray_as_rgb.jpg": encode(photo.convert("L").convert("RGB"), "JPEG", quality=90),
        "bad/banner.png": encode(photo.resize((1000, 80)), "PNG"),
    })
    instance = dg.DagsterInstance.ephemeral()
    batch_id = _land_and_plan(tmp_path, files, instance)
    result = dg.materialize(PER_BATCH, partition_key=batch_id, instance=instance, resources=_resources(tmp_path))
    assert result.success
    checks = _checks(result)
    assert checks["quality_expectations"].passed, checks["quality_expectations"].metadata
    assert checks["quality_batch_usable"].passed and checks["quality_every_image_measured"].passed
    catalog = Catalog(LocalStorage(tmp_path / "data"))
    images = catalog.read("images").to_pandas().set_index("image_id").relative_path
    quality = catalog.read("quality").to_pandas()
    quality["path"] = quality.image_id.map(images)
    flagged = {issue: set(quality.path[quality[f"is_{issue}"]]) for issue in
               ("dark", "blurry", "grayscale", "odd_aspect_ratio")}
    assert "bad/black.png" in flagged["dark"]
    assert "bad/blurred.jpg" in flagged["blurry"]
    assert "bad/gray_as_rgb.jpg" in flagged["grayscale"]
    assert "bad/banner.png" in flagged["odd_aspect_ratio"]
    good = quality[quality.path.str.startswith("ok/")]
    assert not good[[f"is_{i}" for i in ("dark", "light", "blurry", "grayscale")]].any().any()
    report = checks["quality_expectations"].metadata["report"].value
    assert report == str(tmp_path / "data" / "reports" / "validation" / "quality" / f"{batch_id}.html")
    assert f"Validation of batch <span class=\"mono batch\">{batch_id}</span>" in open(report).read()
    assert batch_id in open(checks["quality_expectations"].metadata["report_index"].value).read()
    assert not (tmp_path / "data" / "reports" / "data_docs").exists()
    (materialization,) = result.asset_materializations_for_node("image_quality")
    assert materialization.metadata["count_dark"].value >= 1
    assert "data:image/png;base64," in materialization.metadata["worst_images"].value


def test_a_batch_of_dim_night_photos_is_flagged_dark_but_passes_the_blocking_check(tmp_path):
    night = {f"night/{i}.jpg": encode(ImageEnhance.Brightness(real_photo(i)).enhance(0.22), "JPEG") for i in range(6)}
    instance = dg.DagsterInstance.ephemeral()
    batch_id = _land_and_plan(tmp_path, night, instance)
    result = dg.materialize(PER_BATCH, partition_key=batch_id, instance=instance, resources=_resources(tmp_path))
    assert result.success
    checks = _checks(result)
    assert checks["quality_batch_usable"].passed   # the blocking check uses the unusable rule only
    assert not checks["quality_issue_rates"].passed   # the flags are shown (WARN)
    quality = Catalog(LocalStorage(tmp_path / "data")).read("quality", [batch_id]).to_pandas()
    assert quality.is_dark.all() and not quality.is_unusable.any() and quality.unusable_reason.isna().all()


def test_a_mostly_unusable_batch_is_an_error_that_blocks_downstream(tmp_path):
    dark = {f"black/{i}.jpg": encode(ImageEnhance.Brightness(real_photo(i)).enhance(0.03), "JPEG") for i in range(6)}
    dark["day/ok.jpg"] = encode(real_photo(9), "JPEG")
    instance = dg.DagsterInstance.ephemeral()
    batch_id = _land_and_plan(tmp_path, dark, instance)
    ran = []

    @dg.asset(deps=[image_quality], partitions_def=batch_partitions)
    def consumer_of_quality() -> None:
        ran.append(True)

    result = dg.materialize([*PER_BATCH, consumer_of_quality], partition_key=batch_id, instance=instance,
                            resources=_resources(tmp_path), raise_on_error=False)
    assert not result.success
    checks = _checks(result)
    assert not checks["quality_batch_usable"].passed
    assert checks["quality_batch_usable"].severity == dg.AssetCheckSeverity.ERROR
    assert not checks["quality_issue_rates"].passed
    assert checks["quality_issue_rates"].severity == dg.AssetCheckSeverity.WARN
    assert ran == []

    # the spanning duplicates stage leaves the blocked batch out
    duplicates = dg.materialize([image_duplicates, duplicates_checks.duplicates_one_kept_per_group],
                                instance=instance, resources=_resources(tmp_path), selection=["image_duplicates"])
    (materialization,) = duplicates.asset_materializations_for_node("image_duplicates")
    assert materialization.metadata["batches_left_out"].value == [batch_id]
    assert materialization.metadata["images_indexed"].value == 0


def test_spanning_assets_are_kept_fresh_by_a_running_automation_sensor():
    from cv_dataops.definitions import load_definitions

    defs = load_definitions()
    sensor = defs.resolve_sensor_def("automation_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    spec = next(iter(defs.resolve_assets_def("image_duplicates").specs))
    assert spec.automation_condition is not None


def test_odd_size_is_judged_against_the_catalog_and_thresholds_are_configuration(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    first = _land_and_plan(tmp_path, {f"big/{i}.png": encode(real_photo(i), "PNG") for i in range(10)}, instance)
    resources = _resources(tmp_path)
    assert dg.materialize(PER_BATCH, partition_key=first, instance=instance, resources=resources).success
    # a batch of uniformly small images: within the batch nothing is odd, against the catalog all are
    small = {f"small/{i}.png": encode(real_photo(i, size=(40, 30)), "PNG") for i in range(2)}
    second = _land_and_plan(tmp_path, small, instance)
    assert dg.materialize(PER_BATCH, partition_key=second, instance=instance, resources=resources).success
    catalog = Catalog(LocalStorage(tmp_path / "data"))
    assert catalog.read("quality", [second]).to_pandas().is_odd_size.all()
    assert not catalog.read("quality", [first]).to_pandas().is_odd_size.any()

    # a stricter dark threshold is configuration, and it changes the flags and the recorded version
    before = catalog.read("quality", [first]).to_pandas()
    strict = _resources(tmp_path, thresholds={"dark": 1.01})
    assert dg.materialize(PER_BATCH, partition_key=first, instance=instance, resources=strict,
                          raise_on_error=False) is not None
    after = catalog.read("quality", [first]).to_pandas()
    assert after.is_dark.all() and not before.is_dark.all()
    assert set(after.quality_version) != set(before.quality_version)
